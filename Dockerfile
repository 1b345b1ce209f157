# hearth in a container, built from source: llama.cpp's C++ compiles in the build stage (a
# few minutes), the runtime stage is Debian slim with the binary, running as an unprivileged
# user.
#
#   docker build -t hearth .
#   docker run -p 8080:8080 -v "$PWD/models:/models:ro" hearth serve --model /models/x.gguf
#
# With the default model inside the image (fetch it first):
#
#   ./scripts/fetch-model.sh && docker build --build-arg WITH_DEFAULT_MODEL=1 -t hearth .
#   docker run -p 8080:8080 hearth
#
# The server listens on all interfaces inside the container (HEARTH_HOST): publish the port
# on 127.0.0.1 (`-p 127.0.0.1:8080:8080`) or set an API key (`--api-key-file`, `HEARTH_API_KEYS`).

FROM rust:1.89-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same build as ./scripts/test.sh (and CI): release profile, locked dependencies.
RUN cargo build --release --locked -p hearth
ARG WITH_DEFAULT_MODEL=0
RUN mkdir -p /out/models \
 && if [ "$WITH_DEFAULT_MODEL" = 1 ]; then \
      cp models/SmolLM2-135M-Instruct.Q4_1.gguf /out/models/; \
    fi

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/hearth hearth
COPY --from=build /src/target/release/hearth /usr/local/bin/hearth
COPY --from=build --chown=hearth:hearth /out/models /var/lib/hearth/models
USER hearth
WORKDIR /var/lib/hearth
ENV HEARTH_HOST=0.0.0.0 \
    HEARTH_STATE_DIR=/var/lib/hearth/state \
    HF_HOME=/var/lib/hearth/huggingface
EXPOSE 8080
ENTRYPOINT ["hearth"]
CMD ["serve"]
