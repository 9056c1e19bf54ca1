//! Which `[[paths.rule]]` a connection falls under: the first whose every key matches.

use std::net::SocketAddr;

use toml::Spanned;

use super::owner::Owner;
use crate::config::RuleConfig;

/// The index in `rules` of the first rule matching the connection from `local` to `remote`,
/// owned by `owner` (looked up only when a rule names a cgroup or a process; `None` when it
/// could not be: those rules do not match). `cgroup_id` resolves a rule's cgroup path.
pub fn first_match(
    rules: &[Spanned<RuleConfig>],
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<&Owner>,
    cgroup_id: impl Fn(&str) -> Option<u64>,
) -> Option<usize> {
    rules.iter().map(Spanned::get_ref).position(|rule| {
        rule.dport.is_none_or(|ports| ports.contains(remote.port()))
            && rule.sport.is_none_or(|ports| ports.contains(local.port()))
            && rule
                .process
                .as_ref()
                .is_none_or(|name| owner.and_then(|o| o.process.as_deref()) == Some(name.get_ref().as_str()))
            && rule.cgroup.as_deref().is_none_or(|path| {
                owner.and_then(|o| o.cgroup_id).is_some_and(|id| cgroup_id(path) == Some(id))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    const RULES: &str = "\
[paths]
pm = \"userspace\"
[[paths.interface]]
name = \"wlan0\"
[[paths.interface]]
name = \"wwan0\"
[[paths.rule]]
process = \"backupd\"
mode = \"backup\"
interfaces = [\"wlan0\", \"wwan0\"]
[[paths.rule]]
dport = \"5200-5299\"
sport = 40000
mode = \"full\"
interfaces = [\"wwan0\"]
[[paths.rule]]
cgroup = \"/app.slice/video\"
mode = \"single-path\"
interfaces = [\"wlan0\"]
";

    fn owner(process: &str, cgroup_id: u64) -> Owner {
        Owner { uid: 0, inode: 1, cgroup_id: Some(cgroup_id), pid: Some(2), process: Some(process.into()) }
    }

    #[test]
    fn the_first_rule_whose_every_key_matches_wins() {
        let config = AgentConfig::parse(RULES).unwrap();
        let rules = &config.paths().unwrap().rules;
        let at = |local: &str, remote: &str, owner: Option<&Owner>| {
            let video = |path: &str| (path == "/app.slice/video").then_some(77);
            first_match(rules, local.parse().unwrap(), remote.parse().unwrap(), owner, video)
        };
        let backupd = owner("backupd", 77);
        assert_eq!(at("192.0.2.1:40000", "203.0.113.2:5201", Some(&backupd)), Some(0), "first wins");
        assert_eq!(at("192.0.2.1:40000", "203.0.113.2:5201", None), Some(1), "owner unknown: ports");
        assert_eq!(at("192.0.2.1:40001", "203.0.113.2:5201", None), None, "every key must match");
        assert_eq!(at("192.0.2.1:40000", "203.0.113.2:5300", None), None);
        let player = owner("player", 77);
        assert_eq!(at("192.0.2.1:40001", "203.0.113.2:443", Some(&player)), Some(2), "by cgroup ID");
        assert_eq!(at("192.0.2.1:40001", "203.0.113.2:443", Some(&owner("player", 78))), None);
    }
}
