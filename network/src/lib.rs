//! berth's pod network: bridge, veth, IPAM, NAT and hostPort built in, or the
//! cluster's CNI plugins. It knows nothing of gRPC or CRI.
//!
//! The network lands with the pod-network issue; until then a pod has only
//! `lo` and the agent reports `NetworkReady=false`.
