//! Arbitrary bytes from a peer into the SPDY decoder: no panic, no unbounded
//! allocation, and every frame it accepts encodes and decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_proto::spdy::frame::check_decoder_on(data);
});
