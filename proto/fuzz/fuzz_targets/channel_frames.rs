//! Arbitrary WebSocket channel messages and resize payloads: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((_, payload)) = berth_proto::remotecommand::parse_channel_frame(data) {
        let _ = berth_proto::remotecommand::parse_terminal_size(payload);
    }
});
