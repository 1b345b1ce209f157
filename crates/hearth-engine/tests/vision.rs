//! Images through the real engine: the default model with the test projector
//! (`scripts/fetch-mmproj.sh`: random weights, 16 tokens an image). It cannot describe an
//! image; these tests check that an image prompt runs, counts its cells, is exact alone,
//! beside other streams and from the cache, and that bad images are refused.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use common::*;
use hearth_engine::vision::{placeholders, PromptMedia};
use hearth_engine::{Engine, EngineConfig, EngineError, GenerationRequest, ImageLimits, Projector};

fn projector() -> Arc<Projector> {
    static PROJECTOR: OnceLock<Arc<Projector>> = OnceLock::new();
    PROJECTOR
        .get_or_init(|| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/smollm2-test-mmproj.gguf");
            Arc::new(
                Projector::load(&path, &model(), 2, ImageLimits::default())
                    .expect("run ./scripts/fetch-mmproj.sh to make the test projector"),
            )
        })
        .clone()
}

fn vision_engine(parallel: usize) -> Engine {
    Engine::start(
        model(),
        EngineConfig {
            parallel,
            context_per_slot: 1024,
            threads: 2,
            prompt_cache_ram: 64 << 20,
            projector: Some(projector()),
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), (y as u8) ^ seed, seed])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A chat turn with an image between two texts, as the worker builds it.
fn image_request(image: &[u8], question: &str, max_tokens: usize) -> GenerationRequest {
    let model = model();
    let image = Arc::new(projector().image(image).unwrap());
    let mut prompt = model.tokenize("<|im_start|>user\nLook: ", false, true);
    let media = vec![PromptMedia::new(prompt.len(), image.clone())];
    prompt.extend(placeholders(image.hash, image.tokens));
    prompt.extend(model.tokenize(
        &format!("\n{question}<|im_end|>\n<|im_start|>assistant\n"),
        false,
        true,
    ));
    GenerationRequest {
        media,
        ..greedy(prompt, max_tokens)
    }
}

#[test]
fn an_image_prompt_is_exact_alone_beside_a_text_stream_and_from_the_cache() {
    let request = image_request(&png(64, 48, 7), "What is in the picture?", 24);
    assert_eq!(request.media[0].len, 16);
    let alone = generate(&vision_engine(1), request.clone());
    assert_eq!(alone.usage.prompt_tokens, request.prompt.len());
    assert!(!alone.tokens.is_empty());

    let engine = vision_engine(2);
    let text = greedy(chat_prompt("Count from one to ten."), 24);
    let text_alone = generate(&vision_engine(1), text.clone());
    let text_handle = engine.submit(text).unwrap();
    let image_handle = engine.submit(request.clone()).unwrap();
    assert_eq!(collect(text_handle.events).tokens, text_alone.tokens);
    assert_eq!(collect(image_handle.events).tokens, alone.tokens);

    let again = generate(&engine, request.clone());
    assert_eq!(again.tokens, alone.tokens);
    assert_eq!(again.usage.cached_tokens, request.prompt.len() - 1);
}

#[test]
fn another_image_is_not_taken_from_the_cache() {
    let engine = vision_engine(1);
    let first = image_request(&png(64, 48, 7), "Describe it.", 4);
    let second = image_request(&png(64, 48, 200), "Describe it.", 4);
    generate(&engine, first.clone());
    let other = generate(&engine, second.clone());
    // Only the text before the image is shared.
    assert_eq!(other.usage.cached_tokens, second.media[0].start);
}

#[test]
fn bad_images_and_bad_placements_are_refused() {
    let projector = projector();
    for bad in [
        b"not an image".to_vec(),
        png(64, 48, 3)[..60].to_vec(),
        png(5000, 1, 1),
    ] {
        let err = projector.image(&bad).unwrap_err();
        assert!(matches!(err, EngineError::BadImage(_)), "{err}");
    }
    let engine = vision_engine(1);
    let mut request = image_request(&png(8, 8, 1), "x", 4);
    // An image must be followed by text (the reply starts from a text token's logits).
    request.prompt.truncate(request.media[0].end());
    assert!(matches!(
        engine.prepare(request).err(),
        Some(EngineError::InvalidRequest(_))
    ));
    // An engine without a projector refuses images.
    let plain = common::engine(1);
    let request = image_request(&png(8, 8, 1), "x", 4);
    assert!(matches!(
        plain.prepare(request).err(),
        Some(EngineError::InvalidRequest(_))
    ));
}
