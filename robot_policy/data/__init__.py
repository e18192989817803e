"""Episode store (zarr v3): writer, reader, sampler, normalizer, converters."""
