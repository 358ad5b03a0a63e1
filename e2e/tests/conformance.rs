//! What real clients rely on and berth's own tests never did: the SIG Node
//! suite's defaults (empty hostnames, long names), kubelet's requests, and
//! the behaviour they check afterwards.

use std::time::{Duration, Instant};

use berth_e2e::{cri, Fixture};
use tonic::Code;

/// A pod config as the SIG Node suite builds its default ones: no hostname.
fn suite_pod(f: &Fixture, name: &str) -> cri::PodSandboxConfig {
    let mut cfg = f.pod(name);
    cfg.hostname = String::new();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_default_to_the_node_and_bad_ones_are_refused_first() {
    let mut f = Fixture::start().await;
    // The suite's pod names are long: 63 characters, and no hostname.
    let long_name = format!("pod-{}", "x".repeat(59));
    let cfg = suite_pod(&f, &long_name);
    let pod = f.cri.run_pod(cfg.clone()).await.expect("a pod without hostname runs");
    let c = f.cri.run(&pod, f.container("c", &["sleep", "1000"]), &cfg).await;
    let node = nix::unistd::gethostname().unwrap().to_string_lossy().to_string();
    assert_eq!(f.cri.sh(&c, "hostname; cat /etc/hostname").await, format!("{node}\n{node}\n"));
    f.cri.remove_pod(&pod).await;

    // Refused with the field named, and nothing made: no pod listed, no pod dir.
    for bad in ["x".repeat(65), "bad host".to_string(), "-dash".to_string()] {
        let mut cfg = f.pod("badhost");
        cfg.hostname = bad.clone();
        let e = f.cri.run_pod(cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {}", e.message());
        assert!(e.message().contains("config.hostname"), "{}", e.message());
    }
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:?}");
    let dirs: Vec<_> = std::fs::read_dir(f.berthd.paths.state.join("pods")).unwrap().collect();
    assert!(dirs.is_empty(), "pod dirs left: {dirs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_group_needs_a_user() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("grouponly");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("c", &["sleep", "1000"]);
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().run_as_group = Some(cri::Int64Value { value: 1234 });
    let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("run_as_group"), "{}", e.message());
    f.cri.remove_pod(&pod).await;
}

/// Processes of the container (ps in it) whose command line has `needle`,
/// zombies included.
async fn processes(f: &mut Fixture, id: &str, needle: &str) -> Vec<String> {
    let out = f.cri.sh(id, "ps -o stat,args").await;
    out.lines().filter(|l| l.contains(needle) && !l.contains("ps -o")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeout_kills_and_reaps_the_whole_tree() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("exectree");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    // PID 1 of this container never reaps: orphans and zombies would stay.
    let id = f.cri.run(&pod, f.container("c", &["sleep", "100000"]), &cfg).await;
    let e = f.cri.exec(&id, &["sh", "-c", "sleep 7001 & sleep 7002 & sh -c 'sleep 7003' & sleep 7004"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    let left = processes(&mut f, &id, "sleep 700").await;
    assert!(left.is_empty(), "after DeadlineExceeded: {left:?}");

    // A background child that keeps stdout open does not hold ExecSync
    // beyond the drain bound once the command itself has exited.
    let started = Instant::now();
    let r = f.cri.exec(&id, &["sh", "-c", "sleep 7005 & echo done"], 30).await.unwrap();
    assert_eq!((String::from_utf8_lossy(&r.stdout).trim(), r.exit_code), ("done", 0));
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    // That child was not the exec's to kill: it lives on, as on containerd.
    assert_eq!(processes(&mut f, &id, "sleep 7005").await.len(), 1);
    f.cri.remove_pod(&pod).await;
}

/// A temp dir bind-mounted on itself with a propagation of its own, as
/// kubelet makes its pod directories rshared. Detached (with everything
/// mounted under it) when dropped, also when the test fails.
struct VolumeDir {
    dir: tempfile::TempDir,
}

impl VolumeDir {
    fn new(propagation: nix::mount::MsFlags) -> VolumeDir {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().unwrap();
        mount(Some(dir.path()), dir.path(), None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let v = VolumeDir { dir };
        mount(None::<&str>, v.path(), None::<&str>, propagation | MsFlags::MS_REC, None::<&str>).unwrap();
        v
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Mounts a tmpfs at `sub` on the host, with a file `mark` in it.
    fn mount_tmpfs(&self, sub: &str) {
        let at = self.path().join(sub);
        std::fs::create_dir_all(&at).unwrap();
        nix::mount::mount(Some("tmpfs"), &at, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        std::fs::write(at.join("mark"), "host").unwrap();
    }
}

impl Drop for VolumeDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Host mounts under `dir`.
fn host_mounts_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    berth_runtime_mounts().into_iter().filter(|p| p.starts_with(dir) && p != dir).collect()
}

fn berth_runtime_mounts() -> Vec<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter_map(|l| l.split(' ').nth(4)).map(std::path::PathBuf::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_mount_propagation_as_asked() {
    use nix::mount::MsFlags;
    let mut f = Fixture::start().await;
    let cfg = f.pod("propagation");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    for (propagation, to_host, to_container) in [
        (cri::MountPropagation::PropagationBidirectional, true, true),
        (cri::MountPropagation::PropagationHostToContainer, false, true),
        (cri::MountPropagation::PropagationPrivate, false, false),
    ] {
        let vol = VolumeDir::new(MsFlags::MS_SHARED);
        let mut c = f.container(&format!("c{}", propagation as i32), &["sleep", "1000"]);
        c.linux = berth_e2e::security(|s| s.privileged = true);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: vol.path().display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        let id = f.cri.run(&pod, c, &cfg).await;
        // The rootfs itself never shows up on the host, even with / rshared.
        let leaked: Vec<_> = berth_runtime_mounts().into_iter().filter(|p| p.to_string_lossy().contains(&id)).collect();
        assert!(leaked.is_empty(), "{propagation:?}: container mounts on the host: {leaked:?}");

        let out = f.cri.sh(&id, "mkdir /vol/fromc && mount -t tmpfs tmpfs /vol/fromc && echo c > /vol/fromc/mark && echo ok").await;
        assert_eq!(out.trim(), "ok");
        let seen_on_host = vol.path().join("fromc/mark").exists();
        assert_eq!(seen_on_host, to_host, "{propagation:?}: container mount on the host: {:?}", host_mounts_under(vol.path()));

        vol.mount_tmpfs("fromh");
        let seen = f.cri.sh(&id, "cat /vol/fromh/mark 2>/dev/null || echo none").await;
        assert_eq!(seen.trim() == "host", to_container, "{propagation:?}: host mount in the container: {seen}");
    }

    // A source that cannot propagate as asked is refused before anything runs.
    for (propagation, source) in [
        (cri::MountPropagation::PropagationBidirectional, MsFlags::MS_PRIVATE),
        (cri::MountPropagation::PropagationBidirectional, MsFlags::MS_SLAVE),
        (cri::MountPropagation::PropagationHostToContainer, MsFlags::MS_PRIVATE),
    ] {
        // A slave needs a master: a shared dir's bind, then made its slave.
        let master = VolumeDir::new(MsFlags::MS_SHARED);
        let vol = VolumeDir::new(MsFlags::MS_PRIVATE);
        if source == MsFlags::MS_SLAVE {
            nix::mount::mount(Some(master.path()), vol.path(), None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
            nix::mount::mount(None::<&str>, vol.path(), None::<&str>, MsFlags::MS_SLAVE, None::<&str>).unwrap();
        }
        let mut c = f.container("refused", &["sleep", "1000"]);
        c.linux = berth_e2e::security(|s| s.privileged = true);
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: vol.path().display().to_string(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{propagation:?} on {source:?}: {}", e.message());
        assert!(e.message().contains("config.mounts[0].propagation"), "{}", e.message());
        let _ = nix::mount::umount2(vol.path(), nix::mount::MntFlags::MNT_DETACH);
    }
    f.cri.remove_pod(&pod).await;
}

/// kubelet creates containers from the image id PullImage returned, with
/// the pod spec's name in `user_specified_image`; the status it copies into
/// the pod (`kubectl describe`) must name the image as the pod spec did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_status_names_the_image_as_kubelet_expects() {
    let mut f = Fixture::start().await;
    let id = f.cri.pull(&f.busybox.clone()).await.unwrap();
    let digests = f.cri.image_status(&f.busybox.clone()).await.unwrap().unwrap().repo_digests;
    assert_eq!(digests.len(), 1, "{digests:?}");
    let cfg = f.pod("imagename");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();

    let mut c = f.container("kubelet", &["sleep", "1000"]);
    c.image = Some(cri::ImageSpec { image: id.clone(), user_specified_image: f.busybox.clone(), ..Default::default() });
    let kubelet = f.cri.run(&pod, c, &cfg).await;
    // As crictl does: the name only.
    let crictl = f.cri.run(&pod, f.container("crictl", &["sleep", "1000"]), &cfg).await;
    // An old kubelet: the id only.
    let mut c = f.container("byid", &["sleep", "1000"]);
    c.image = Some(cri::ImageSpec { image: id.clone(), ..Default::default() });
    let by_id = f.cri.run(&pod, c, &cfg).await;

    for c in [&kubelet, &crictl, &by_id] {
        let s = f.cri.status(c).await;
        assert_eq!(s.image.as_ref().unwrap().image, f.busybox, "{c}");
        assert_eq!(s.image_ref, digests[0]);
        assert_eq!(s.image_id, id);
    }
    let s = f.cri.status(&kubelet).await;
    assert_eq!(s.image.unwrap().user_specified_image, f.busybox);
    let listed = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(listed.iter().all(|c| c.image.as_ref().unwrap().image == f.busybox && c.image_id == id), "{listed:?}");
    f.cri.remove_pod(&pod).await;
}

/// KEP-4639: another image's filesystem mounted read-only (and noexec) in
/// the container, reported in the status, kept while mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_mount_another_image_read_only() {
    use berth_e2e::oci::{self, Compression, ImageSettings, LayerBuilder};
    let mut f = Fixture::start().await;
    // Two layers (an overlay) and one layer (a bind) of data.
    let mut base = LayerBuilder::new();
    base.file("a.txt", b"from the lower layer\n", 0o644).file("gone", b"x", 0o644);
    let mut top = LayerBuilder::new();
    top.file("b.txt", b"from the upper layer\n", 0o644).file("run.sh", b"#!/bin/sh\necho ran\n", 0o755).whiteout("gone");
    let two = oci::image(vec![base.build(Compression::Gzip), top.build(Compression::Gzip)], &ImageSettings::default());
    f.registry.push("models", "v1", &two).await;
    let mut single = LayerBuilder::new();
    single.file("only.txt", b"one layer\n", 0o644);
    let one = oci::image(vec![single.build(Compression::Gzip)], &ImageSettings::default());
    f.registry.push("config", "v1", &one).await;
    let (models, config) = (f.registry.reference("models", "v1"), f.registry.reference("config", "v1"));

    let cfg = f.pod("imagevol");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let volume = |path: &str, image: &str| cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        readonly: true,
        ..Default::default()
    };
    // Not pulled yet: refused, naming the mount.
    let mut c = f.container("c", &["sleep", "1000"]);
    c.mounts = vec![volume("/models", &models)];
    let e = f.cri.create(&pod, c.clone(), &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert!(e.message().contains("config.mounts[0].image"), "{}", e.message());
    // As kubelet does: pull first.
    let models_id = f.cri.pull(&models).await.unwrap();
    let config_id = f.cri.pull(&config).await.unwrap();
    c.mounts = vec![volume("/models", &models), volume("/etc/app", &config)];
    let id = f.cri.run(&pod, c, &cfg).await;

    let out = f.cri.sh(&id, "cat /models/a.txt /models/b.txt /etc/app/only.txt; ls /models").await;
    assert_eq!(out, "from the lower layer\nfrom the upper layer\none layer\na.txt\nb.txt\nrun.sh\n");
    for (path, what) in [("/models/new", "overlay"), ("/etc/app/new", "bind")] {
        let w = f.cri.sh(&id, &format!("(touch {path}) 2>&1; echo rc=$?")).await;
        assert!(w.contains("Read-only file system") && !w.contains("rc=0"), "{what}: {w}");
    }
    let x = f.cri.sh(&id, "(/models/run.sh) 2>&1; echo rc=$?").await;
    assert!(!x.contains("ran") && x.contains("Permission denied"), "noexec: {x}");

    let st = f.cri.status(&id).await;
    let m = st.mounts.iter().find(|m| m.container_path == "/models").expect("the image volume in the status");
    let spec = m.image.as_ref().expect("its image");
    assert_eq!((spec.image.as_str(), spec.user_specified_image.as_str(), m.host_path.as_str()), (models_id.as_str(), models.as_str(), ""));
    // KEP-5365: the digest of what was mounted, the id the pull returned.
    assert_eq!(spec.image_ref, models_id);

    // Not removable while mounted; the container's own image is.
    let e = f.cri.remove_image(&models_id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains(&id), "{}", e.message());
    assert!(f.cri.image_status(&models).await.unwrap().is_some());
    f.cri.remove_pod(&pod).await;
    f.cri.remove_image(&models_id).await.unwrap();
    f.cri.remove_image(&config_id).await.unwrap();
    assert!(f.cri.image_status(&models).await.unwrap().is_none());

    // An image volume has no host path.
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    f.cri.pull(&config).await.unwrap();
    let mut c = f.container("both", &["sleep", "1000"]);
    c.mounts = vec![cri::Mount { host_path: "/tmp".into(), ..volume("/etc/app", &config) }];
    let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("config.mounts[0].host_path"), "{}", e.message());
    f.cri.remove_pod(&pod).await;
}

/// KEP-4639's `image_sub_path` (kubelet ≥ 1.33): only that path of the
/// image is mounted — a directory of the merged layers, a file, a path in a
/// one-layer image — resolved inside the image; bad paths are refused
/// naming the field, and a path an upper layer deleted is an error, not
/// the lower layer's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volume_sub_paths() {
    use berth_e2e::oci::{self, Compression, ImageSettings, LayerBuilder};
    let mut f = Fixture::start().await;
    let mut base = LayerBuilder::new();
    base.dir("data", 0o755).file("data/a.txt", b"lower a\n", 0o644).file("data/gone", b"x", 0o644).file("top.txt", b"top\n", 0o644);
    base.dir("old", 0o755).file("old/f", b"old\n", 0o644);
    let mut upper = LayerBuilder::new();
    upper.file("data/b.txt", b"upper b\n", 0o644).whiteout("data/gone").whiteout("old").symlink("esc", "/");
    let two = oci::image(vec![base.build(Compression::Gzip), upper.build(Compression::Gzip)], &ImageSettings::default());
    f.registry.push("subpaths", "v1", &two).await;
    let mut single = LayerBuilder::new();
    single.dir("conf", 0o755).file("conf/app.ini", b"[app]\n", 0o644);
    f.registry.push("subconf", "v1", &oci::image(vec![single.build(Compression::Gzip)], &ImageSettings::default())).await;
    let (models, conf) = (f.registry.reference("subpaths", "v1"), f.registry.reference("subconf", "v1"));
    f.cri.pull(&models).await.unwrap();
    f.cri.pull(&conf).await.unwrap();

    let cfg = f.pod("subpath");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let volume = |path: &str, image: &str, sub: &str| cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        image_sub_path: sub.into(),
        readonly: true,
        ..Default::default()
    };
    let mut c = f.container("c", &["sleep", "1000"]);
    c.mounts = vec![volume("/data", &models, "data"), volume("/top.txt", &models, "./top.txt"), volume("/etc/app", &conf, "conf")];
    let id = f.cri.run(&pod, c, &cfg).await;
    let out = f.cri.sh(&id, "ls /data; cat /top.txt /etc/app/app.ini; (touch /data/x) 2>&1 | grep -c Read-only").await;
    assert_eq!(out, "a.txt\nb.txt\ntop\n[app]\n1\n");
    let st = f.cri.status(&id).await;
    let m = st.mounts.iter().find(|m| m.container_path == "/data").expect("the sub path volume in the status");
    assert_eq!(m.image_sub_path, "data");

    let field = "config.mounts[0].image_sub_path";
    for (sub, host_path, why) in [
        ("nothere", "", "does not exist"),
        ("../etc", "", "back traversals"),
        ("/data", "", "back traversals"),
        // Through the image's own symlink to its root: the node's /etc/hostname is not the image's.
        ("esc/etc/hostname", "", "does not exist"),
        ("data", "/tmp", "only an image volume"),
    ] {
        let mut c = f.container("bad", &["sleep", "1000"]);
        c.mounts = vec![cri::Mount {
            host_path: host_path.into(),
            image: (host_path.is_empty()).then(|| cri::ImageSpec { image: models.clone(), ..Default::default() }),
            ..volume("/v", &models, sub)
        }];
        let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{sub}: {}", e.message());
        assert!(e.message().contains(field) && e.message().contains(why), "{sub}: {}", e.message());
    }
    // Deleted by the upper layer: present in a layer, absent from the image.
    for sub in ["old", "data/gone"] {
        let mut c = f.container("deleted", &["sleep", "1000"]);
        c.mounts = vec![volume("/v", &models, sub)];
        let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
        assert!(e.message().contains(sub) && e.message().contains("sub path"), "{sub}: {}", e.message());
    }
    f.cri.remove_pod(&pod).await;
}

/// KEP-3857: `recursive_read_only` makes the submounts of a volume read-only
/// too, where `readonly` alone leaves them writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_volumes() {
    use nix::mount::MsFlags;
    let mut f = Fixture::start().await;
    let st = f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    assert!(st.runtime_handlers[0].features.as_ref().unwrap().recursive_read_only_mounts);

    // A volume with a writable tmpfs mounted inside it.
    let vol = VolumeDir::new(MsFlags::MS_PRIVATE);
    vol.mount_tmpfs("sub");
    let cfg = f.pod("rro");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let volume = |ro: bool, rro: bool| cri::Mount {
        container_path: "/vol".into(),
        host_path: vol.path().display().to_string(),
        readonly: ro,
        recursive_read_only: rro,
        ..Default::default()
    };
    for (name, rro, sub_writable) in [("ro", false, true), ("rro", true, false)] {
        let mut c = f.container(name, &["sleep", "1000"]);
        c.mounts = vec![volume(true, rro)];
        let id = f.cri.run(&pod, c, &cfg).await;
        assert_eq!(f.cri.sh(&id, "cat /vol/sub/mark").await, "host");
        let top = f.cri.sh(&id, "(touch /vol/x) 2>&1; echo rc=$?").await;
        assert!(top.contains("Read-only file system"), "{name}: {top}");
        let sub = f.cri.sh(&id, "(touch /vol/sub/x) 2>&1; echo rc=$?").await;
        assert_eq!(sub.contains("rc=0"), sub_writable, "{name}: {sub}");
    }
    assert!(vol.path().join("sub/x").exists(), "plain readonly left the submount writable");

    for (bad, why) in [(volume(false, true), "needs readonly"), (cri::Mount { propagation: 1, ..volume(true, true) }, "private")] {
        let mut c = f.container("bad", &["sleep", "1000"]);
        c.mounts = vec![bad];
        let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("config.mounts[0].recursive_read_only") && e.message().contains(why), "{}", e.message());
    }
    f.cri.remove_pod(&pod).await;
}

/// Stops `id`, whose script touches /tmp/ready once its traps are set, with
/// a 20 s timeout: done in less than 10 s, so by the signal it traps and not
/// by SIGKILL (the scripts ignore SIGTERM).
async fn stop_by_its_signal(f: &mut Fixture, id: &str, name: &str) {
    assert!(f.cri.wait_file(id, "/tmp/ready", 250, Duration::from_millis(20)).await, "{name}: the script never started");
    let t = Instant::now();
    f.cri.stop(id, 20).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{name}: the stop waited for SIGKILL, so the signal it traps was not sent");
}

/// KEP-4960: kubelet's `lifecycle.stopSignal` arrives as
/// ContainerConfig.stop_signal. StopContainer sends it first, and
/// ContainerStatus reports the signal a stop sends (SIGTERM when neither the
/// container nor the image names one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_signal_kubelet_asks_for_is_sent_and_reported() {
    let mut f = Fixture::start().await;
    let cfg = suite_pod(&f, "stopsig");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    // Each exits with its own code on its signal and ignores SIGTERM, so a
    // stop that sent SIGTERM would wait out the timeout and end in SIGKILL.
    for (name, signal, code, value) in [("usr1", "USR1", 42, cri::Signal::Sigusr1), ("rtmin1", "35", 43, cri::Signal::Sigrtminplus1)] {
        let script = format!("trap 'exit {code}' {signal}; trap '' TERM; touch /tmp/ready; while true; do sleep 0.05; done");
        let mut c = f.container(name, &["sh", "-c", &script]);
        c.stop_signal = value as i32;
        let id = f.cri.run(&pod, c, &cfg).await;
        assert_eq!(f.cri.status(&id).await.stop_signal, value as i32, "{name}: the status before the stop");
        stop_by_its_signal(&mut f, &id, name).await;
        let s = f.cri.status(&id).await;
        assert_eq!((s.exit_code, s.stop_signal), (code, value as i32), "{name}");
    }

    // Without one: the image's STOPSIGNAL, and busybox's image has none.
    let plain = f.cri.run(&pod, f.container("plain", &["sleep", "1000"]), &cfg).await;
    assert_eq!(f.cri.status(&plain).await.stop_signal, cri::Signal::Sigterm as i32);

    // An image's realtime STOPSIGNAL as systemd images name theirs; the
    // container's own signal still comes first.
    let settings = berth_e2e::oci::ImageSettings { stop_signal: "SIGRTMIN+3".into(), ..Default::default() };
    f.registry.push("rtstop", "latest", &berth_e2e::oci::busybox_image(&settings)).await;
    let rtstop = f.registry.reference("rtstop", "latest");
    f.cri.pull(&rtstop).await.expect("pulling the STOPSIGNAL image");
    for (name, own, code) in [("imagesig", None, 44), ("ownsig", Some(cri::Signal::Sigusr1), 45)] {
        let script = "trap 'exit 44' 37; trap 'exit 45' USR1; trap '' TERM; touch /tmp/ready; while true; do sleep 0.05; done";
        let mut c = berth_e2e::container_config(name, &rtstop, &["sh", "-c", script]);
        c.stop_signal = own.map_or(0, |s| s as i32);
        let id = f.cri.run(&pod, c, &cfg).await;
        let want = own.unwrap_or(cri::Signal::Sigrtminplus3) as i32;
        assert_eq!(f.cri.status(&id).await.stop_signal, want, "{name}");
        stop_by_its_signal(&mut f, &id, name).await;
        assert_eq!(f.cri.status(&id).await.exit_code, code, "{name}");
    }

    // A value outside the enum: InvalidArgument naming the field, nothing made.
    let before = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers.len();
    let mut bad = f.container("bad", &["true"]);
    bad.stop_signal = 66;
    let e = f.cri.create(&pod, bad, &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("config.stop_signal"), "{}", e.message());
    let after = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers.len();
    assert_eq!(before, after);

    // The signal is in the container's record: a restarted berthd reports it.
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    let usr1 = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    let usr1 = usr1.iter().find(|c| c.metadata.as_ref().is_some_and(|m| m.name == "usr1")).expect("the usr1 container");
    assert_eq!(f.cri.status(&usr1.id).await.stop_signal, cri::Signal::Sigusr1 as i32);
    f.cri.remove_pod(&pod).await;
}

/// KEP-5825 (kubelet's CRIListStreaming gate): each Stream RPC answers what
/// its List RPC answers, filter included; every item once; no empty message;
/// an empty answer is a stream that ends at once. The filters are those of
/// cri-tools' "Streaming List" specs: id (also one that is no id at all),
/// state, and labels that match and that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_rpcs_answer_what_the_lists_answer() {
    use futures::StreamExt;

    /// Every message of a stream, checked to be non-empty, as one list.
    async fn all<M, T>(stream: tonic::Streaming<M>, items: impl Fn(M) -> Vec<T>) -> Vec<T> {
        let messages: Vec<M> = stream.map(|m| m.expect("a stream message")).collect().await;
        let mut out = Vec::new();
        for m in messages {
            let got = items(m);
            assert!(!got.is_empty(), "an empty message in the stream");
            out.extend(got);
        }
        out
    }
    fn sorted(mut ids: Vec<String>) -> Vec<String> {
        ids.sort();
        ids
    }

    let mut f = Fixture::start().await;
    let mut pods = Vec::new();
    let labels = |v: &str| std::collections::HashMap::from([("stream-test".to_string(), v.to_string())]);
    for name in ["one", "two"] {
        let mut cfg = suite_pod(&f, name);
        cfg.labels = labels(name);
        let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
        let mut c = f.container("c", &["sleep", "1000"]);
        c.labels = labels(name);
        let c = f.cri.run(&pod, c, &cfg).await;
        pods.push((pod, c));
    }
    let rt = &mut f.cri.runtime;

    let listed = rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    let streamed =
        all(rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default()).await.unwrap().into_inner(), |m| m.pod_sandboxes).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(sorted(streamed.iter().map(|p| p.id.clone()).collect()), sorted(listed.iter().map(|p| p.id.clone()).collect()));
    let one = cri::PodSandboxFilter { id: pods[0].0.clone(), ..Default::default() };
    let streamed =
        all(rt.stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter: Some(one) }).await.unwrap().into_inner(), |m| m.pod_sandboxes)
            .await;
    assert_eq!(streamed.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), [pods[0].0.clone()]);
    // The filters of cri-tools' "Streaming List" specs, each against the pods it must give.
    let pod_state = |state: cri::PodSandboxState| Some(cri::PodSandboxStateValue { state: state as i32 });
    for (filter, want) in [
        (cri::PodSandboxFilter { id: "0".repeat(64), ..Default::default() }, vec![]),
        (cri::PodSandboxFilter { id: "non-existent-id".into(), ..Default::default() }, vec![]),
        (
            cri::PodSandboxFilter { state: pod_state(cri::PodSandboxState::SandboxReady), ..Default::default() },
            sorted(vec![pods[0].0.clone(), pods[1].0.clone()]),
        ),
        (cri::PodSandboxFilter { state: pod_state(cri::PodSandboxState::SandboxNotready), ..Default::default() }, vec![]),
        (cri::PodSandboxFilter { label_selector: labels("one"), ..Default::default() }, vec![pods[0].0.clone()]),
        (cri::PodSandboxFilter { label_selector: labels("no"), ..Default::default() }, vec![]),
    ] {
        let req = cri::StreamPodSandboxesRequest { filter: Some(filter.clone()) };
        let streamed = all(rt.stream_pod_sandboxes(req).await.unwrap().into_inner(), |m| m.pod_sandboxes).await;
        assert_eq!(sorted(streamed.iter().map(|p| p.id.clone()).collect()), want, "{filter:?}");
    }

    let listed = rt.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    let streamed = all(rt.stream_containers(cri::StreamContainersRequest::default()).await.unwrap().into_inner(), |m| m.containers).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(streamed, listed);
    let by_pod = cri::ContainerFilter { pod_sandbox_id: pods[1].0.clone(), ..Default::default() };
    let streamed =
        all(rt.stream_containers(cri::StreamContainersRequest { filter: Some(by_pod) }).await.unwrap().into_inner(), |m| m.containers)
            .await;
    assert_eq!(streamed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), [pods[1].1.clone()]);
    for (state, want) in [(cri::ContainerState::ContainerRunning, 2), (cri::ContainerState::ContainerExited, 0)] {
        let by_state = cri::ContainerFilter { state: Some(cri::ContainerStateValue { state: state as i32 }), ..Default::default() };
        let streamed =
            all(rt.stream_containers(cri::StreamContainersRequest { filter: Some(by_state) }).await.unwrap().into_inner(), |m| {
                m.containers
            })
            .await;
        assert_eq!(streamed.len(), want, "containers {state:?}");
    }

    let listed = rt.list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap().into_inner().stats;
    let streamed =
        all(rt.stream_container_stats(cri::StreamContainerStatsRequest::default()).await.unwrap().into_inner(), |m| m.container_stats)
            .await;
    let ids = |s: &[cri::ContainerStats]| sorted(s.iter().map(|s| s.attributes.as_ref().unwrap().id.clone()).collect());
    assert_eq!(ids(&streamed), ids(&listed));
    assert_eq!(ids(&streamed).len(), 2);
    for (value, want) in [("two", vec![pods[1].1.clone()]), ("no", vec![])] {
        let by_label = cri::ContainerStatsFilter { label_selector: labels(value), ..Default::default() };
        let req = cri::StreamContainerStatsRequest { filter: Some(by_label) };
        let streamed = all(rt.stream_container_stats(req).await.unwrap().into_inner(), |m| m.container_stats).await;
        assert_eq!(ids(&streamed), want, "container stats labelled {value}");
    }

    let listed = rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default()).await.unwrap().into_inner().stats;
    let streamed =
        all(rt.stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default()).await.unwrap().into_inner(), |m| m.pod_sandbox_stats)
            .await;
    let ids = |s: &[cri::PodSandboxStats]| sorted(s.iter().map(|s| s.attributes.as_ref().unwrap().id.clone()).collect());
    assert_eq!(ids(&streamed), ids(&listed));
    assert_eq!(ids(&streamed).len(), 2);
    let linux = streamed.iter().map(|s| s.linux.as_ref().expect("linux stats").containers.len()).collect::<Vec<_>>();
    assert_eq!(linux, [1, 1], "each pod's stats carry its container's");
    for (value, want) in [("one", vec![pods[0].0.clone()]), ("no", vec![])] {
        let by_label = cri::PodSandboxStatsFilter { label_selector: labels(value), ..Default::default() };
        let req = cri::StreamPodSandboxStatsRequest { filter: Some(by_label) };
        let streamed = all(rt.stream_pod_sandbox_stats(req).await.unwrap().into_inner(), |m| m.pod_sandbox_stats).await;
        assert_eq!(ids(&streamed), want, "pod stats labelled {value}");
    }

    let listed = rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner().pod_metrics;
    let streamed =
        all(rt.stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {}).await.unwrap().into_inner(), |m| m.pod_sandbox_metrics)
            .await;
    let ids = |s: &[cri::PodSandboxMetrics]| sorted(s.iter().map(|s| s.pod_sandbox_id.clone()).collect());
    assert_eq!(ids(&streamed), ids(&listed));
    assert_eq!(ids(&streamed).len(), 2);

    let img = &mut f.cri.image;
    let listed = img.list_images(cri::ListImagesRequest::default()).await.unwrap().into_inner().images;
    let streamed = all(img.stream_images(cri::StreamImagesRequest::default()).await.unwrap().into_inner(), |m| m.images).await;
    assert!(!listed.is_empty());
    assert_eq!(streamed, listed);
    let busybox = cri::ImageFilter { image: Some(cri::ImageSpec { image: f.busybox.clone(), ..Default::default() }) };
    let streamed =
        all(img.stream_images(cri::StreamImagesRequest { filter: Some(busybox) }).await.unwrap().into_inner(), |m| m.images).await;
    assert_eq!(streamed.len(), 1);
    assert!(streamed[0].repo_tags.contains(&f.busybox), "{:?}", streamed[0].repo_tags);

    for (pod, _) in &pods {
        f.cri.remove_pod(pod).await;
    }
}

/// KEP-1287: kubelet resizes a pod's cgroup itself and then tells the runtime
/// with UpdatePodSandboxResources; a recent kubelet also sends the API
/// server's audit id with an exec, which berth logs beside what it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_resource_updates_and_exec_audit_ids() {
    let mut f = Fixture::start().await;
    let cfg = suite_pod(&f, "resize");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let resources = cri::LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    let update =
        |id: &str| cri::UpdatePodSandboxResourcesRequest { pod_sandbox_id: id.into(), overhead: None, resources: Some(resources.clone()) };
    f.cri.runtime.update_pod_sandbox_resources(update(&pod)).await.expect("UpdatePodSandboxResources of a pod");
    let e = f.cri.runtime.update_pod_sandbox_resources(update(&"0".repeat(64))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = f.cri.runtime.update_pod_sandbox_resources(update("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("pod_sandbox_id"), "{}", e.message());
    let log = f.berthd.log();
    assert!(log.contains("pod resources updated by kubelet") && log.contains("memory_limit=67108864"), "{log}");

    let c = f.cri.run(&pod, f.container("c", &["sleep", "1000"]), &cfg).await;
    let req = cri::ExecRequest {
        container_id: c.clone(),
        cmd: vec!["true".into()],
        stdout: true,
        audit_request_id: "0f3c2d1e-audit-e2e".into(),
        ..Default::default()
    };
    f.cri.runtime.exec(req).await.unwrap();
    let log = f.berthd.log();
    let line = log.lines().find(|l| l.contains("exec offered")).unwrap_or_else(|| panic!("no exec line in {log}"));
    assert!(line.contains("audit_request_id=0f3c2d1e-audit-e2e") && line.contains(&c), "{line}");
    f.cri.remove_pod(&pod).await;
}

/// kubelet's evented PLEG (the EventedPLEG gate) takes a PodSandboxStatus
/// answer that carries a timestamp, and each container event, as the pod's
/// whole set of containers: `containers_statuses` must hold every container
/// of the pod as ContainerStatus reports it, or kubelet sees a pod without
/// containers and creates them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_carries_its_containers_as_the_evented_pleg_reads_them() {
    use futures::StreamExt;
    let mut f = Fixture::start().await;
    let mut events = f.cri.runtime.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
    let cfg = suite_pod(&f, "evented");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let other_cfg = suite_pod(&f, "evented-other");
    let other = f.cri.run_pod(other_cfg.clone()).await.unwrap();
    f.cri.run(&other, f.container("elsewhere", &["sleep", "1000"]), &other_cfg).await;

    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let before = now();
    let empty = f.cri.pod_status(&pod, false).await;
    assert!(empty.containers_statuses.is_empty(), "{:?}", empty.containers_statuses);
    assert!(empty.timestamp >= before && empty.timestamp <= now(), "timestamp {} is not the time of the answer", empty.timestamp);

    let created = f.cri.create(&pod, f.container("created", &["sleep", "1000"]), &cfg).await.unwrap();
    let running = f.cri.run(&pod, f.container("running", &["sleep", "1000"]), &cfg).await;
    let exits = f.cri.run(&pod, f.container("exits", &["sh", "-c", "exit 3"]), &cfg).await;

    // Only PodSandboxStatus is asked until the exit shows: it must notice the
    // exit itself, not after a ContainerStatus call did.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = f.cri.pod_status(&pod, false).await;
        let exited = answer.containers_statuses.iter().any(|s| s.id == exits && s.state == cri::ContainerState::ContainerExited as i32);
        if exited {
            break answer;
        }
        assert!(Instant::now() < deadline, "the exit never showed in PodSandboxStatus: {:?}", answer.containers_statuses);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: Vec<_> = answer.containers_statuses.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, vec![exits.clone(), running.clone(), created.clone()], "the pod's containers, newest first");
    for s in &answer.containers_statuses {
        assert_eq!(s, &f.cri.status(&s.id).await, "PodSandboxStatus and ContainerStatus differ for {}", s.id);
    }
    let exited = &answer.containers_statuses[0];
    assert_eq!((exited.exit_code, exited.reason.as_str()), (3, "Error"));

    // The exit's event carries the same set, with the exit in it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next()).await.expect("the exit's event").unwrap().unwrap();
        if ev.container_id == exits && ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32 {
            // A recent kubelet reads the stopped container's exit there to
            // relist the pod at once after a crash.
            let states: Vec<_> = ev.containers_statuses.iter().map(|s| (s.id.clone(), s.state, s.exit_code)).collect();
            use cri::ContainerState as S;
            assert_eq!(
                states,
                vec![
                    (exits.clone(), S::ContainerExited as i32, 3),
                    (running.clone(), S::ContainerRunning as i32, 0),
                    (created.clone(), S::ContainerCreated as i32, 0)
                ]
            );
            break;
        }
    }

    // A removed container is no longer the pod's.
    f.cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: exits.clone() }).await.unwrap();
    let ids: Vec<_> = f.cri.pod_status(&pod, false).await.containers_statuses.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![running, created]);
    f.cri.remove_pod(&pod).await;
    f.cri.remove_pod(&other).await;
}
