//! Integration tests against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok) started by `hack/cluster`.
//!
//! Every test lives in this one binary so that one control plane serves them all; each
//! test works in a namespace of its own (see [`harness::namespace`]).

mod ahead;
mod badinput;
mod chart;
mod cost;
mod dashboard;
mod examples;
mod faults;
mod gangs;
#[path = "../support/mod.rs"]
mod harness;
mod instances;
mod isolation;
mod kstatus;
mod leader;
mod migration;
mod nodeloss;
mod observability;
mod plugin;
mod preemption;
mod rbac;
mod realnode;
mod scale;
mod slices;
mod smoke;
mod usage;
mod users;
