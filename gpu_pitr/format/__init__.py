"""WAL format: layout, codec, writer, reader, framing and the shared payload parser."""
