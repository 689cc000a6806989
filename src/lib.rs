//! stowage: a Kubernetes backup operator with typed, schema-validated plugins.
//!
//! Module map (see `docs/architecture.md`):
//! - [`api`]: the `BackupTarget` and `BackupSchedule` custom resources.
//! - [`registry`]: the plugins this build ships, as the CRD's plugin enum.
//! - [`crd`]: CRD generation (`stowage crd`, `crds/`).
//! - [`retention`]: GFS retention of artifacts.
//! - [`cli`]: the `stowage` command line.
//! - [`fault`]: fault-injection points for the fault suites (debug builds only).

pub mod api;
pub mod artifacts;
pub mod cli;
pub mod controller;
pub mod copy_self;
pub mod crd;
pub mod fault;
pub mod installed;
pub mod jobs;
pub mod registry;
pub mod retention;
pub mod runner;
pub mod schedule;
