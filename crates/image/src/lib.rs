//! crust-image: the on-disk format (CRIU 4.x framing and messages). No syscalls.
