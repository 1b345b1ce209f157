#!/usr/bin/env python3
"""Copy a GGUF's tokenizer (and name) into a GGUF with no tensors: what scripts/gpu/mkmodel.py
needs to give random-weight models a real vocabulary, in ~2 MB instead of a whole model.
Usage: vocab-gguf.py MODEL.gguf OUT.gguf"""
import sys

import gguf

src = gguf.GGUFReader(sys.argv[1])
out = gguf.GGUFWriter(sys.argv[2], str(src.fields["general.architecture"].contents()))
for name, field in src.fields.items():
    if not (name.startswith("tokenizer.") or name == "general.name"):
        continue
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        out.add_key_value(name, field.contents(), kind, sub_type=field.types[-1])
    else:
        out.add_key_value(name, field.contents(), kind)
out.write_header_to_file()
out.write_kv_data_to_file()
out.write_tensors_to_file()
out.close()
