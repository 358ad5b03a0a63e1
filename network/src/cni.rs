//! CNI plugin mode (see the pod-network issue); filled in below.
