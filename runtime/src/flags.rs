//! The command lines berth gives its own processes (`berth-monitor <mode>`,
//! `berth-monitor-loop`): `--flag value` pairs, then optionally `--` and
//! the arguments after it. Not a user interface: berthd and berth-monitor
//! write them.

/// `--flag value` pairs (the flag without its dashes), and the arguments
/// after a `--`.
pub type Flags = (Vec<(String, String)>, Vec<String>);

/// Splits `--flag value` pairs up to a `--`; returns them and the rest.
pub fn parse(args: &[String]) -> Result<Flags, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--" {
            return Ok((out, args[i + 1..].to_vec()));
        }
        let flag = args[i].strip_prefix("--").ok_or_else(|| format!("unexpected argument {:?}", args[i]))?;
        let value = args.get(i + 1).ok_or_else(|| format!("--{flag} needs a value"))?;
        out.push((flag.to_string(), value.clone()));
        i += 2;
    }
    Ok((out, Vec::new()))
}

/// The value of the first `--name`.
pub fn get<'a>(flags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    flags.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str())
}
