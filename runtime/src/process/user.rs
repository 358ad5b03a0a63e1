//! Users inside the container: names resolved in the container's own
//! `/etc/passwd` and `/etc/group` (read after `pivot_root`, so the image's
//! files are the only ones seen), supplementary groups as Docker computes
//! them, and the switch to the final ids.

use nix::unistd::{Gid, Uid};

use crate::message::InitError;

/// Final ids of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry { name: f.first()?.to_string(), uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn groups(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves the spec user against files' contents; `name` is `user[:group]`
/// when the user was given by name. Pure, for tests.
pub fn resolve_with(
    spec_user: &oci_spec::runtime::User,
    name: Option<&str>,
    strict: bool,
    passwd_text: &str,
    group_text: &str,
) -> Result<ResolvedUser, InitError> {
    let users = passwd(passwd_text);
    let all_groups = groups(group_text);
    let (mut uid, mut gid) = (spec_user.uid(), spec_user.gid());
    let mut user_name: Option<String> = None;
    if let Some(spec) = name {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        match u.parse::<u32>() {
            Ok(n) => {
                uid = n;
                gid = users.iter().find(|e| e.uid == n).map(|e| e.gid).unwrap_or(0);
            }
            Err(_) => {
                let e = users.iter().find(|e| e.name == u).ok_or_else(|| InitError::UnknownUser(u.to_string()))?;
                uid = e.uid;
                gid = e.gid;
            }
        }
        if let Some(g) = g {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => all_groups.iter().find(|e| e.name == g).map(|e| e.gid).ok_or_else(|| InitError::UnknownGroup(g.to_string()))?,
            };
        }
    }
    if user_name.is_none() {
        user_name = users.iter().find(|e| e.uid == uid).map(|e| e.name.clone());
    }
    // Supplementary groups: the image's memberships of the user, then the spec's.
    let mut extra: Vec<u32> = match &user_name {
        _ if strict => Vec::new(),
        Some(n) => all_groups.iter().filter(|g| g.members.iter().any(|m| m == n)).map(|g| g.gid).collect(),
        None => Vec::new(),
    };
    extra.extend(spec_user.additional_gids().clone().unwrap_or_default());
    let mut groups = vec![gid];
    for g in extra {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(ResolvedUser { uid, gid, groups })
}

/// The user of `process`, the spec's, with the spec's user-name and
/// strict-groups annotations: resolved against the container's
/// `/etc/passwd` and `/etc/group` (a missing file is empty, as in scratch
/// images).
pub fn resolve(spec: &oci_spec::runtime::Spec, process: &oci_spec::runtime::Process) -> Result<ResolvedUser, InitError> {
    let strict = crate::annotations::get(spec, crate::annotations::GROUPS_STRICT).is_some();
    let p = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let g = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_with(process.user(), crate::annotations::get(spec, crate::annotations::USER), strict, &p, &g)
}

impl ResolvedUser {
    /// setgroups, setgid, setuid, in that order.
    pub fn switch(&self) -> Result<(), InitError> {
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| InitError::Setup(format!("setgroups: {e}")))?;
        nix::unistd::setresgid(Gid::from_raw(self.gid), Gid::from_raw(self.gid), Gid::from_raw(self.gid))
            .map_err(|e| InitError::Setup(format!("setgid {}: {e}", self.gid)))?;
        nix::unistd::setresuid(Uid::from_raw(self.uid), Uid::from_raw(self.uid), Uid::from_raw(self.uid))
            .map_err(|e| InitError::Setup(format!("setuid {}: {e}", self.uid)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nextra:x:2000:user,other\nvideo:x:44:\n";

    fn spec_user(uid: u32, gid: u32, extra: Vec<u32>) -> oci_spec::runtime::User {
        oci_spec::runtime::UserBuilder::default().uid(uid).gid(gid).additional_gids(extra).build().unwrap()
    }

    #[test]
    fn names_numbers_and_memberships() {
        let r = resolve_with(&spec_user(0, 0, vec![]), Some("user"), false, PASSWD, GROUP).unwrap();
        assert_eq!(r, ResolvedUser { uid: 1000, gid: 1000, groups: vec![1000, 2000] });
        let strict = resolve_with(&spec_user(0, 0, vec![]), Some("user"), true, PASSWD, GROUP).unwrap();
        assert_eq!(strict.groups, vec![1000], "Strict ignores the image's memberships");
        let r = resolve_with(&spec_user(0, 0, vec![]), Some("1000:video"), false, PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 44));
        let r = resolve_with(&spec_user(1000, 1000, vec![44]), None, false, PASSWD, GROUP).unwrap();
        assert_eq!(r.groups, vec![1000, 2000, 44]);
        let r = resolve_with(&spec_user(4242, 4242, vec![]), None, false, PASSWD, GROUP).unwrap();
        assert_eq!(r, ResolvedUser { uid: 4242, gid: 4242, groups: vec![4242] });
        assert_eq!(
            resolve_with(&spec_user(0, 0, vec![]), Some("bob"), false, PASSWD, GROUP).unwrap_err(),
            InitError::UnknownUser("bob".into())
        );
        assert_eq!(
            resolve_with(&spec_user(0, 0, vec![]), Some("user:nogrp"), false, PASSWD, GROUP).unwrap_err(),
            InitError::UnknownGroup("nogrp".into())
        );
    }
}
