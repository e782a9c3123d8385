//! The end-to-end suite, one test binary: real etcd, PostgreSQL 15, `patrol` agents,
//! `patrol-router`, HAProxy and Patroni's `patronictl`, each test on its own free ports in its
//! own temp dirs (the harness is the `patrol-tests` library). One module per area; `support`
//! holds what several areas share. Tests run in parallel threads of this one process, so none
//! may change process-wide state (environment, current directory, umask, signal handlers).

mod bootstrap;
mod callbacks;
mod cascading;
mod crate_graph;
mod dcs_etcd;
mod dcs_input;
mod demo;
mod diagnostics;
mod etcd_members;
mod etcd_tls;
mod failover;
mod generate_config;
mod haproxy;
mod harness;
mod live_config;
mod log_files;
mod methods;
mod observability;
mod patrolctl;
mod patroni_configs;
mod patronictl_compat;
mod pre_promote;
mod refusals;
mod reload;
mod rest_api;
mod router;
mod slots;
mod standby_cluster;
mod stats_page;
mod support;
mod sync;
mod systemd_notify;
