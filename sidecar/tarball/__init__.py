"""The archive file itself: a tar stream, compressed with zstd and optionally encrypted with
age, with its `.sha256` beside it (adapters: files and bytes, no engine).

- `archive`: writing an archive under a partial name (hash, checksum, then rename) and
  reading its bytes back;
- `extract`: the checked extractor, the one tar parser of restores (each member checked as
  it is written; also `python -m sidecar.tarball.extract`);
- `crypto`: age encryption and decryption, streaming both ways;
- `streams`: the small stream adapters the three share with the engine.
"""
