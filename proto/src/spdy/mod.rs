//! SPDY/3.1 as Kubernetes streaming uses it: the frame codec with its
//! zlib-compressed header blocks ([`frame`]) and the spec's compression
//! dictionary.

mod dictionary;
pub mod frame;

pub use frame::{header, Decoder, Encoder, Frame, FrameError, Headers};
