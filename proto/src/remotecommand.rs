//! Kubernetes remote command and port forwarding on the wire, whatever the
//! transport: the channel ids and WebSocket subprotocols (`v5.channel.k8s.io`
//! and older; `portforward.k8s.io`), the SPDY protocol versions, the
//! `TerminalSize` a client sends for resize, and the `metav1.Status` that
//! ends an exec on the error channel.

/// WebSocket subprotocols for exec and attach, most preferred first.
pub const WS_EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// WebSocket subprotocols for port forwarding, most preferred first: SPDY
/// tunnelled through the WebSocket (client-go's, KEP-4006), then the
/// channel protocol.
pub const WS_PORTFORWARD_PROTOCOLS: &[&str] = &[WS_SPDY_TUNNEL_PORTFORWARD, "v2.portforward.k8s.io", "portforward.k8s.io"];
/// The WebSocket subprotocol whose binary messages carry a SPDY/3.1 byte
/// stream speaking `portforward.k8s.io`.
pub const WS_SPDY_TUNNEL_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// SPDY `X-Stream-Protocol-Version`s for exec and attach, most preferred first.
pub const SPDY_EXEC_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
/// The SPDY `X-Stream-Protocol-Version` for port forwarding.
pub const SPDY_PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Channel: the process's stdin.
pub const STDIN: u8 = 0;
/// Channel: stdout (everything, with a TTY).
pub const STDOUT: u8 = 1;
/// Channel: stderr.
pub const STDERR: u8 = 2;
/// Channel: the session's end, as a `metav1.Status` (v4 and later).
pub const ERROR: u8 = 3;
/// Channel: terminal size, a `TerminalSize` JSON object.
pub const RESIZE: u8 = 4;
/// Channel (v5): "close the stream named by the next byte".
pub const CLOSE: u8 = 255;

/// One message of the WebSocket channel protocol: the channel id byte, then
/// the payload.
pub fn channel_frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    v
}

/// Splits a channel message into its channel and payload; None when empty.
pub fn parse_channel_frame(msg: &[u8]) -> Option<(u8, &[u8])> {
    msg.split_first().map(|(c, rest)| (*c, rest))
}

/// A Kubernetes `TerminalSize` (`{"Width":…,"Height":…}`) as (cols, rows);
/// None when it is not one (or does not fit client-go's uint16).
pub fn terminal_size(v: &serde_json::Value) -> Option<(u16, u16)> {
    Some((u16::try_from(v["Width"].as_u64()?).ok()?, u16::try_from(v["Height"].as_u64()?).ok()?))
}

/// [`terminal_size`] of one JSON text.
pub fn parse_terminal_size(json: &[u8]) -> Option<(u16, u16)> {
    terminal_size(&serde_json::from_slice(json).ok()?)
}

/// The `metav1.Status` for a command that exited with `code`: Success, or
/// client-go's `NonZeroExitCode` with the code as the `ExitCode` cause.
pub fn exit_status_json(code: i32) -> String {
    if code == 0 {
        return r#"{"metadata":{},"status":"Success"}"#.to_string();
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": { "causes": [ { "reason": "ExitCode", "message": code.to_string() } ] }
    })
    .to_string()
}

/// The `metav1.Status` for a session that could not run at all.
pub fn failure_json(message: &str) -> String {
    serde_json::json!({ "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError" }).to_string()
}

/// Port forwarding over WebSocket: port number `i` of the request uses data
/// channel `2i` and error channel `2i + 1`.
pub fn portforward_channels(i: usize) -> Option<(u8, u8)> {
    let data = u8::try_from(2 * i).ok()?;
    Some((data, data.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json() {
        assert!(exit_status_json(0).contains("Success"));
        let v: serde_json::Value = serde_json::from_str(&exit_status_json(3)).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value = serde_json::from_str(&failure_json("gone")).unwrap();
        assert_eq!((v["status"].as_str(), v["message"].as_str()), (Some("Failure"), Some("gone")));
    }

    #[test]
    fn channel_frames_and_sizes() {
        let f = channel_frame(STDOUT, b"hi");
        assert_eq!(parse_channel_frame(&f), Some((STDOUT, &b"hi"[..])));
        assert_eq!(parse_channel_frame(&[]), None);
        assert_eq!(parse_terminal_size(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(parse_terminal_size(br#"{"Width":70000,"Height":24}"#), None);
        assert_eq!(parse_terminal_size(b"nonsense"), None);
        assert_eq!(portforward_channels(1), Some((2, 3)));
        assert_eq!(portforward_channels(200), None);
    }
}
