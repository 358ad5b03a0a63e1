//! Per-pod network setup and teardown: built-in mode versus CNI mode (Debian's
//! bridge + host-local + portmap plugins). RunPodSandbox and StopPodSandbox
//! are timed with a pod network and with host networking; the difference of
//! the medians is the network's own cost.
//! `cargo bench -p berth-e2e --bench network`

use std::time::Instant;

use berth_e2e::{cri, Fixture, NetNames};

const PODS: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (run medians, stop medians) in ms for PODS pods.
async fn measure(f: &mut Fixture, host_network: bool) -> (f64, f64) {
    let (mut run, mut stop) = (Vec::new(), Vec::new());
    for i in 0..PODS {
        let mut cfg = f.pod(&format!("n{i}-{host_network}"));
        if host_network {
            cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().network = 2;
        }
        let t = Instant::now();
        let pod = f.cri.run_pod(cfg).await.expect("RunPodSandbox");
        run.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop");
        stop.push(t.elapsed().as_secs_f64() * 1e3);
        f.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("remove");
    }
    (median(run), median(stop))
}

fn main() {
    berth_e2e::bench::main(run())
}

async fn run() {
    let mut builtin = Fixture::start().await;
    let (host_run, host_stop) = measure(&mut builtin, true).await;
    let (b_run, b_stop) = measure(&mut builtin, false).await;
    drop(builtin);

    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let net = NetNames::new();
    std::fs::write(
        conf.join("10-bench.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"bench","plugins":[{{"type":"bridge","bridge":"{}","isGateway":true,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{}"}}]]}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
            net.bridge,
            tmp.path().join("ipam").display(),
            net.subnet
        ),
    )
    .unwrap();
    let mut cni = Fixture::start_with_config(&format!(
        "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"/usr/lib/cni\"]\n",
        conf.display()
    ))
    .await;
    let (c_run, c_stop) = measure(&mut cni, false).await;
    drop(cni);
    net.remove();

    println!("pod network setup and teardown, {PODS} pods per mode (medians)");
    println!("  host network:  RunPodSandbox {host_run:7.2} ms, StopPodSandbox {host_stop:7.2} ms");
    println!(
        "  built-in:      RunPodSandbox {b_run:7.2} ms, StopPodSandbox {b_stop:7.2} ms  => setup {:6.2} ms, teardown {:6.2} ms",
        b_run - host_run,
        b_stop - host_stop
    );
    println!("  CNI (bridge+host-local+portmap): RunPodSandbox {c_run:7.2} ms, StopPodSandbox {c_stop:7.2} ms  => setup {:6.2} ms, teardown {:6.2} ms", c_run - host_run, c_stop - host_stop);
}
