//! The Grafana dashboard names only metrics the agent exposes: every family, described even
//! when it has no sample, from the functions the endpoints call.

use mptcp_agent::{
    daemon::health::Health,
    dataplane::stats::InterfaceCounters,
    lb::LbStats,
    metrics::{
        Families,
        agent::{self, TableUsage},
        lb,
    },
};
use mptcp_common::lb::LbCounters;
use mptcp_tests::prometheus::{dashboard, dashboard_metric_names, exposed_names};

fn every_family() -> Families {
    let mut families = Families::default();
    agent::counter_families(&mut families, &[("eth0".to_owned(), InterfaceCounters::default())]);
    agent::table_families(&mut families, &[TableUsage { table: "SUBFLOWS", entries: 1, max_entries: 2 }]);
    agent::tracked_families(&mut families, &[], &[], 0);
    agent::path_families(&mut families, None);
    agent::cc_families(&mut families, &[]);
    families.extend(Health::new(true, true).serving_metrics().families());
    let stats = LbStats {
        counters: LbCounters::default(),
        vips: Vec::new(),
        backends: Vec::new(),
        collisions: Vec::new(),
        sync: None,
    };
    families.extend(lb::families(&stats));
    families
}

#[test]
fn every_metric_the_dashboard_uses_is_exposed() {
    let names = dashboard_metric_names(&dashboard().unwrap());
    assert!(names.len() > 30, "{names:?}");
    let exposed = exposed_names(&every_family().openmetrics().unwrap());
    let missing: Vec<&String> = names.difference(&exposed).collect();
    assert!(missing.is_empty(), "the dashboard uses metrics no endpoint exposes: {missing:?}");
}
