//! Security contexts, checked from inside the container: ids, capabilities,
//! seccomp, masked and read-only paths, privileged, no_new_privs, sysctls.

use berth_e2e::{cri, Fixture};
use tonic::Code;

/// A field of /proc/self/status inside the container.
async fn status_field(f: &mut Fixture, id: &str, field: &str) -> String {
    let out = f.cri.sh(id, &format!("grep '^{field}:' /proc/self/status")).await;
    out.split_whitespace().nth(1).unwrap_or("").to_string()
}

fn cap_bit(hex: &str, bit: u32) -> bool {
    u64::from_str_radix(hex, 16).unwrap() & (1 << bit) != 0
}

const CAP_CHOWN: u32 = 0;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_capabilities_seccomp_and_paths() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("sec");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();

    // Default: root, containerd's capabilities, no seccomp (kubelet's default), masked paths.
    let plain = f.cri.run(&pod, f.container("plain", &["sleep", "1000"]), &cfg).await;
    let eff = status_field(&mut f, &plain, "CapEff").await;
    assert!(cap_bit(&eff, CAP_CHOWN) && !cap_bit(&eff, CAP_SYS_ADMIN) && !cap_bit(&eff, CAP_NET_ADMIN), "CapEff {eff}");
    assert_eq!(status_field(&mut f, &plain, "Seccomp").await, "0");
    // /proc/keys and /proc/timer_list exist on the host and are masked (read as empty).
    for p in ["/proc/keys", "/proc/timer_list"] {
        if std::path::Path::new(p).exists() {
            assert!(!std::fs::read(p).unwrap().is_empty() || p == "/proc/keys");
            assert_eq!(f.cri.sh(&plain, &format!("wc -c < {p}")).await.trim(), "0", "{p} is masked");
        }
    }
    let r = f.cri.exec(&plain, &["sh", "-c", "echo x > /proc/sys/kernel/domainname"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "/proc/sys is read-only");
    let r = f.cri.exec(&plain, &["sh", "-c", "mkdir -p /mnt && mount -t tmpfs none /mnt"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "an unprivileged container cannot mount");

    // run_as_user/group and supplemental groups, reported in the status too.
    let mut c = f.container("ids", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.run_as_user = Some(cri::Int64Value { value: 1234 });
        s.run_as_group = Some(cri::Int64Value { value: 5678 });
        s.supplemental_groups = vec![4242];
    });
    let ids = f.cri.run(&pod, c, &cfg).await;
    assert_eq!(f.cri.sh(&ids, "id -u; id -g; id -G").await, "1234\n5678\n5678 4242\n");
    // Strict: no memberships from the image's /etc/group (user is in "extra" there).
    let mut c = f.container("strict", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.run_as_username = "user".into();
        s.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
    });
    let strict = f.cri.run(&pod, c, &cfg).await;
    assert_eq!(f.cri.sh(&strict, "id -G").await.trim(), "1000");
    let user = f.cri.status(&ids).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid, user.supplemental_groups), (1234, 5678, vec![5678, 4242]));
    assert_eq!(status_field(&mut f, &ids, "CapEff").await, "0000000000000000", "non-root has no effective caps");

    // add/drop, RuntimeDefault seccomp, no_new_privs, read-only rootfs.
    let mut c = f.container("tight", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        });
        s.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
        s.no_new_privs = true;
        s.readonly_rootfs = true;
    });
    let tight = f.cri.run(&pod, c, &cfg).await;
    let eff = status_field(&mut f, &tight, "CapEff").await;
    assert!(cap_bit(&eff, CAP_NET_ADMIN) && !cap_bit(&eff, CAP_CHOWN), "CapEff {eff}");
    assert_eq!(status_field(&mut f, &tight, "Seccomp").await, "2");
    assert_eq!(status_field(&mut f, &tight, "NoNewPrivs").await, "1");
    for cmd in [&["unshare", "-n", "true"][..], &["sh", "-c", "touch /newfile"][..]] {
        let r = f.cri.exec(&tight, cmd, 10).await.unwrap();
        assert_ne!(r.exit_code, 0, "{cmd:?} should fail");
    }
    let r = f.cri.exec(&tight, &["unshare", "-n", "true"], 10).await.unwrap();
    assert!(String::from_utf8_lossy(&r.stderr).contains("not permitted"), "{}", String::from_utf8_lossy(&r.stderr));

    // A Localhost profile denying mkdir.
    let profile = f.berthd.dir().join("no-mkdir.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],"syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#).unwrap();
    let mut c = f.container("local", &["sleep", "1000"]);
    let p = profile.display().to_string();
    c.linux = berth_e2e::security(|s| {
        s.seccomp = Some(cri::SecurityProfile { profile_type: cri::security_profile::ProfileType::Localhost as i32, localhost_ref: p })
    });
    let local = f.cri.run(&pod, c, &cfg).await;
    let r = f.cri.exec(&local, &["mkdir", "/tmp/x"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0);
    assert_eq!(f.cri.sh(&local, "touch /tmp/file && echo ok").await.trim(), "ok");

    // Privileged: all capabilities, no seccomp, can mount, host devices.
    let mut c = f.container("priv", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| s.privileged = true);
    let privileged = f.cri.run(&pod, c, &cfg).await;
    assert!(cap_bit(&status_field(&mut f, &privileged, "CapEff").await, CAP_SYS_ADMIN));
    assert_eq!(f.cri.sh(&privileged, "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted").await.trim(), "mounted");
    assert_eq!(f.cri.sh(&privileged, "test -c /dev/kmsg && echo yes").await.trim(), "yes");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_security_input_is_refused_and_creates_nothing() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("secbad");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("badcap", &["true"]);
    c.linux =
        berth_e2e::security(|s| s.capabilities = Some(cri::Capability { add_capabilities: vec!["CAP_FLY".into()], ..Default::default() }));
    let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("CAP_FLY"), "{}", e.message());
    for (name, path, content) in [("missing", "/nonexistent/profile.json", None), ("garbage", "garbage.json", Some("{not json"))] {
        let path = if let Some(text) = content {
            let p = f.berthd.dir().join(path);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        } else {
            path.to_string()
        };
        let mut c = f.container(name, &["true"]);
        let p = path.clone();
        c.linux = berth_e2e::security(|s| {
            s.seccomp = Some(cri::SecurityProfile { profile_type: cri::security_profile::ProfileType::Localhost as i32, localhost_ref: p })
        });
        let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {}", e.message());
        assert!(e.message().contains(&path), "{}", e.message());
    }
    if !std::path::Path::new("/sys/module/apparmor").exists() {
        let mut c = f.container("aa", &["true"]);
        c.linux = berth_e2e::security(|s| {
            s.apparmor = Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: "my-profile".into(),
            })
        });
        let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("AppArmor is not enabled") && e.message().contains("my-profile"), "{}", e.message());
    }
    let mut c = f.container("nouser", &["true"]);
    c.linux = berth_e2e::security(|s| s.run_as_username = "nosuchuser".into());
    let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
    assert!(e.message().contains("unable to find user nosuchuser"), "{}", e.message());
    let listed = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(listed.is_empty(), "refused containers must not exist");

    // Sysctls: namespaced ones apply inside the pod only; others are refused.
    let mut sys = f.pod("sysctl");
    sys.linux.as_mut().unwrap().sysctls = [("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())].into();
    let sp = f.cri.run_pod(sys.clone()).await.unwrap();
    let c = f.cri.run(&sp, f.container("check", &["sleep", "1000"]), &sys).await;
    assert_eq!(f.cri.sh(&c, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start").await.trim(), "0");
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert_ne!(host.trim(), "0", "the host's value must not change");
    let mut bad = f.pod("sysctl-bad");
    bad.linux.as_mut().unwrap().sysctls = [("vm.swappiness".to_string(), "10".to_string())].into();
    let e = f.cri.run_pod(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("vm.swappiness"), "{}", e.message());
    f.cri.remove_pod(&pod).await;
    f.cri.remove_pod(&sp).await;
}
