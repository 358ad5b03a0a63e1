//! berth's executor: takes an OCI runtime spec and a bundle and runs the
//! container's processes in namespaces and cgroups, with a small monitor per
//! container. It knows nothing of gRPC or CRI.
//!
//! The executor lands with the pods-and-containers issue; until then the agent
//! answers the RPCs that need it with `Unimplemented`.

pub mod fs;
