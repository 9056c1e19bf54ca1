//! What `top` shows, apart from any terminal: successive table reads become rows with rates,
//! sorted, filtered and with one selected.

use std::{collections::HashMap, net::SocketAddr};

use crate::{
    cc::SubflowCc,
    dataplane::tables::{ConnectionView, Snapshot, SubflowView, Token},
};

/// A subflow's two ends, client first: the identity rates are kept under across reads.
type Ends = (SocketAddr, SocketAddr);

/// What the rows are ordered by (`s` cycles through them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Rate,
    Bytes,
    Token,
    Age,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            Self::Rate => Self::Bytes,
            Self::Bytes => Self::Token,
            Self::Token => Self::Age,
            Self::Age => Self::Rate,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Bytes => "bytes",
            Self::Token => "token",
            Self::Age => "age",
        }
    }
}

/// Bytes one direction carried so far and per second over the last interval (none after the
/// first read).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flow {
    pub bytes: u64,
    pub rate: Option<f64>,
}

impl Flow {
    fn add(self, other: Self) -> Self {
        let rate = match (self.rate, other.rate) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        Self { bytes: self.bytes + other.bytes, rate }
    }
}

/// One subflow with its rates and, when the sock_ops program follows it, its congestion state.
#[derive(Debug)]
pub struct SubflowRow {
    pub view: SubflowView,
    pub cc: Option<SubflowCc>,
    pub c2s: Flow,
    pub s2c: Flow,
}

impl SubflowRow {
    fn ends(&self) -> Ends {
        (self.view.client, self.view.server)
    }

    /// Whether the filter text is in one of its addresses.
    fn matches(&self, needle: &str) -> bool {
        [self.view.client, self.view.server].iter().any(|end| end.to_string().contains(needle))
    }
}

/// A connection (none for the subflows no connection claims) and its subflows; its flows are the
/// sums of its subflows' (bytes on the wire, reinjections included).
#[derive(Debug)]
pub struct Group {
    pub connection: Option<ConnectionView>,
    pub subflows: Vec<SubflowRow>,
    pub c2s: Flow,
    pub s2c: Flow,
    pub first_seen_ns: u64,
}

impl Group {
    fn id(&self) -> RowId {
        RowId::Connection(self.connection.as_ref().map(|c| c.server_token))
    }

    fn matches(&self, needle: &str) -> bool {
        let tokens = self.connection.iter().flat_map(|c| [Some(c.server_token), c.client_token]).flatten();
        tokens.map(|t| t.to_string()).any(|t| t.contains(needle))
            || self.subflows.iter().any(|s| s.matches(needle))
    }

    fn rate(&self) -> f64 {
        self.c2s.rate.unwrap_or(0.0) + self.s2c.rate.unwrap_or(0.0)
    }
}

/// Which row is selected, kept across reads by identity, not position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowId {
    /// A connection by its token; `None` is the group of unclaimed subflows.
    Connection(Option<Token>),
    Subflow(SocketAddr, SocketAddr),
}

/// One line of the table, in display order.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    Connection(&'a Group),
    Subflow(&'a SubflowRow),
}

impl Row<'_> {
    pub fn id(&self) -> RowId {
        match self {
            Self::Connection(group) => group.id(),
            Self::Subflow(subflow) => RowId::Subflow(subflow.view.client, subflow.view.server),
        }
    }
}

/// A key press, as the model understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    Enter,
    Esc,
    Backspace,
    /// Ctrl-C.
    Interrupt,
}

/// What the event loop does after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

/// The state of the view: the latest groups, the previous byte counts, and the operator's
/// choices.
#[derive(Debug, Default)]
pub struct Top {
    groups: Vec<Group>,
    /// Bytes per subflow (c2s, s2c) at `previous_ns`.
    previous: HashMap<Ends, (u64, u64)>,
    previous_ns: Option<u64>,
    now_ns: u64,
    pub sort: SortKey,
    pub reversed: bool,
    pub filter: String,
    /// The filter is being typed (after `/`, until Enter or Esc).
    pub editing: bool,
    selected: Option<RowId>,
    /// Where the selection was, for when its row goes away.
    selected_index: usize,
}

impl Top {
    /// Takes a new read of the tables and of the congestion state, made at `now_ns`
    /// (CLOCK_MONOTONIC, the clock of the tables' timestamps).
    pub fn update(&mut self, snapshot: &Snapshot, congestion: &[SubflowCc], now_ns: u64) {
        let seconds = self.previous_ns.map(|then| now_ns.saturating_sub(then) as f64 / 1e9);
        let previous = &self.previous;
        let flow = |bytes: u64, before: Option<u64>| Flow {
            bytes,
            rate: seconds.filter(|s| *s > 0.0).map(|s| bytes.saturating_sub(before.unwrap_or(0)) as f64 / s),
        };
        let subflow_row = |(key, subflow): &(mptcp_common::maps::FlowKey, mptcp_common::maps::Subflow)| {
            let view = SubflowView::new(key, subflow);
            let ends = (view.client, view.server);
            let before = previous.get(&ends);
            let cc = congestion
                .iter()
                .find(|cc| cc.ends == [ends.0, ends.1] || cc.ends == [ends.1, ends.0])
                .cloned();
            SubflowRow {
                c2s: flow(view.c2s.bytes, before.map(|b| b.0)),
                s2c: flow(view.s2c.bytes, before.map(|b| b.1)),
                view,
                cc,
            }
        };
        let group = |connection: Option<ConnectionView>, subflows: Vec<SubflowRow>| {
            let total =
                |pick: fn(&SubflowRow) -> Flow| subflows.iter().map(pick).fold(Flow::default(), Flow::add);
            let first_seen = subflows.iter().map(|s| s.view.first_seen_ns).min().unwrap_or(0);
            Group {
                c2s: total(|s| s.c2s),
                s2c: total(|s| s.s2c),
                first_seen_ns: connection.as_ref().map_or(first_seen, |c| c.first_seen_ns),
                connection,
                subflows,
            }
        };
        let mut groups: Vec<Group> = snapshot
            .connections
            .iter()
            .map(|tracked| group(Some(tracked.view()), tracked.subflows.iter().map(subflow_row).collect()))
            .collect();
        if !snapshot.orphans.is_empty() {
            groups.push(group(None, snapshot.orphans.iter().map(subflow_row).collect()));
        }
        self.previous =
            groups.iter().flat_map(|g| &g.subflows).map(|s| (s.ends(), (s.c2s.bytes, s.s2c.bytes))).collect();
        self.previous_ns = Some(now_ns);
        self.now_ns = now_ns;
        self.groups = groups;
        self.keep_selection();
    }

    /// Nanoseconds since `first_seen_ns`, at the latest read.
    pub fn age_ns(&self, first_seen_ns: u64) -> u64 {
        self.now_ns.saturating_sub(first_seen_ns)
    }

    pub fn connections(&self) -> usize {
        self.groups.iter().filter(|g| g.connection.is_some()).count()
    }

    /// The rows to show: the groups that match the filter, ordered by the sort key (the
    /// unclaimed subflows last), each connection followed by its subflows in the same order.
    pub fn rows(&self) -> Vec<Row<'_>> {
        let needle = self.filter.to_lowercase();
        let mut groups: Vec<&Group> =
            self.groups.iter().filter(|g| needle.is_empty() || g.matches(&needle)).collect();
        groups.sort_by(|a, b| {
            let unclaimed = a.connection.is_none().cmp(&b.connection.is_none());
            unclaimed.then_with(|| self.order(self.group_order(a, b)))
        });
        let mut rows = Vec::new();
        for group in groups {
            rows.push(Row::Connection(group));
            let mut subflows: Vec<&SubflowRow> = group.subflows.iter().collect();
            subflows.sort_by(|a, b| self.order(self.subflow_order(a, b)));
            rows.extend(subflows.into_iter().map(Row::Subflow));
        }
        rows
    }

    /// Rates and bytes largest first, tokens smallest first, the oldest first; `r` reverses.
    fn order(&self, ordering: std::cmp::Ordering) -> std::cmp::Ordering {
        if self.reversed { ordering.reverse() } else { ordering }
    }

    fn group_order(&self, a: &Group, b: &Group) -> std::cmp::Ordering {
        let token = |g: &Group| g.connection.as_ref().map(|c| c.server_token);
        match self.sort {
            SortKey::Rate => b.rate().total_cmp(&a.rate()),
            SortKey::Bytes => (b.c2s.bytes + b.s2c.bytes).cmp(&(a.c2s.bytes + a.s2c.bytes)),
            SortKey::Token => token(a).cmp(&token(b)),
            SortKey::Age => a.first_seen_ns.cmp(&b.first_seen_ns),
        }
        .then_with(|| token(a).cmp(&token(b)))
    }

    fn subflow_order(&self, a: &SubflowRow, b: &SubflowRow) -> std::cmp::Ordering {
        let rate = |s: &SubflowRow| s.c2s.rate.unwrap_or(0.0) + s.s2c.rate.unwrap_or(0.0);
        match self.sort {
            SortKey::Rate => rate(b).total_cmp(&rate(a)),
            SortKey::Bytes => (b.c2s.bytes + b.s2c.bytes).cmp(&(a.c2s.bytes + a.s2c.bytes)),
            // Within a connection every subflow has its token: the order they came in.
            SortKey::Token | SortKey::Age => a.view.first_seen_ns.cmp(&b.view.first_seen_ns),
        }
        .then_with(|| a.ends().cmp(&b.ends()))
    }

    /// The selected row's position in [`Top::rows`].
    pub fn selected(&self, rows: &[Row<'_>]) -> Option<usize> {
        let selected = self.selected?;
        rows.iter().position(|row| row.id() == selected)
    }

    /// After a read or a filter change: the same row if it is still shown, else the one now at
    /// its place.
    fn keep_selection(&mut self) {
        let rows = self.rows();
        let index = match self.selected(&rows) {
            Some(index) => Some(index),
            None if rows.is_empty() => None,
            None => Some(self.selected_index.min(rows.len() - 1)),
        };
        self.selected = index.map(|i| rows[i].id());
        self.selected_index = index.unwrap_or(0);
    }

    fn step(&mut self, down: bool) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let index = match (self.selected(&rows), down) {
            (None, _) => 0,
            (Some(i), true) => (i + 1).min(rows.len() - 1),
            (Some(i), false) => i.saturating_sub(1),
        };
        self.selected = Some(rows[index].id());
        self.selected_index = index;
    }

    pub fn handle(&mut self, key: Key) -> Action {
        match key {
            Key::Interrupt => return Action::Quit,
            Key::Up => self.step(false),
            Key::Down => self.step(true),
            Key::Esc => {
                self.editing = false;
                self.filter.clear();
            }
            Key::Enter if self.editing => self.editing = false,
            Key::Backspace if self.editing => {
                self.filter.pop();
            }
            Key::Char(c) if self.editing => self.filter.push(c),
            Key::Char('q') => return Action::Quit,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('r') => self.reversed = !self.reversed,
            Key::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            Key::Char(_) | Key::Enter | Key::Backspace => {}
        }
        self.keep_selection();
        Action::Continue
    }
}

#[cfg(test)]
pub(super) mod tests {
    use mptcp_common::maps::{Connection, ConnectionChecks, FlowKey, Subflow, subflow_kind, subflow_state};

    use super::*;
    use crate::dataplane::tables::TrackedConnection;

    fn key(client: [u8; 4], port: u16, server: [u8; 4]) -> FlowKey {
        let mapped = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
        FlowKey {
            family: 4,
            addr_a: mapped(client),
            addr_b: mapped(server),
            port_a: port,
            port_b: 5601,
            ..Default::default()
        }
    }

    fn subflow(token: u32, first_seen_ns: u64, c2s: u64, s2c: u64) -> Subflow {
        let mut s = Subflow {
            conn_token: token,
            kind: subflow_kind::INITIAL,
            state: subflow_state::ESTABLISHED,
            first_seen_ns,
            ..Default::default()
        };
        s.dir[0].bytes = c2s;
        s.dir[1].bytes = s2c;
        s
    }

    fn tracked(token: u32, first_seen_ns: u64, subflows: Vec<(FlowKey, Subflow)>) -> TrackedConnection {
        let connection = Connection { server_token: token, first_seen_ns, ..Default::default() };
        TrackedConnection { connection, checks: ConnectionChecks::default(), subflows }
    }

    /// Two connections: 0xa with two subflows, 0xb (older) with one; `bytes` scales the counts.
    pub(in crate::top) fn snapshot(bytes: [u64; 3]) -> Snapshot {
        Snapshot {
            connections: vec![
                tracked(
                    0xa,
                    200,
                    vec![
                        (key([192, 0, 2, 1], 40000, [192, 0, 2, 2]), subflow(0xa, 200, bytes[0], 10)),
                        (key([198, 51, 100, 1], 40001, [192, 0, 2, 2]), subflow(0xa, 300, bytes[1], 10)),
                    ],
                ),
                tracked(
                    0xb,
                    100,
                    vec![(key([192, 0, 2, 1], 40002, [192, 0, 2, 2]), subflow(0xb, 100, bytes[2], 0))],
                ),
            ],
            orphans: vec![(key([203, 0, 113, 1], 40003, [203, 0, 113, 2]), subflow(0, 50, 5, 5))],
        }
    }

    fn tokens(top: &Top) -> Vec<Option<u32>> {
        top.rows()
            .iter()
            .filter_map(|row| match row {
                Row::Connection(g) => Some(g.connection.as_ref().map(|c| c.server_token.0)),
                Row::Subflow(_) => None,
            })
            .collect()
    }

    fn group(top: &Top, token: u32) -> &Group {
        top.groups
            .iter()
            .find(|g| g.connection.as_ref().is_some_and(|c| c.server_token.0 == token))
            .expect("group")
    }

    #[test]
    fn rates_are_the_bytes_between_two_reads_over_the_time_between_them() {
        let mut top = Top::default();
        top.update(&snapshot([1000, 0, 0]), &[], 1_000_000_000);
        assert_eq!(group(&top, 0xa).c2s, Flow { bytes: 1000, rate: None });
        // Half a second later: +500 and +250 bytes c2s on 0xa's subflows, nothing s2c.
        top.update(&snapshot([1500, 250, 4000]), &[], 1_500_000_000);
        let a = group(&top, 0xa);
        assert_eq!(a.subflows[0].c2s, Flow { bytes: 1500, rate: Some(1000.0) });
        assert_eq!(a.subflows[1].c2s, Flow { bytes: 250, rate: Some(500.0) });
        assert_eq!(a.c2s, Flow { bytes: 1750, rate: Some(1500.0) });
        assert_eq!(a.s2c, Flow { bytes: 20, rate: Some(0.0) });
        assert_eq!(group(&top, 0xb).c2s, Flow { bytes: 4000, rate: Some(8000.0) });
    }

    #[test]
    fn a_counter_that_starts_over_gives_no_negative_rate() {
        let mut top = Top::default();
        top.update(&snapshot([1000, 0, 0]), &[], 1_000_000_000);
        top.update(&snapshot([10, 0, 0]), &[], 2_000_000_000);
        assert_eq!(group(&top, 0xa).subflows[0].c2s.rate, Some(0.0));
    }

    #[test]
    fn every_sort_key_orders_the_connections_and_r_reverses_it() {
        let mut top = Top::default();
        top.update(&snapshot([0, 0, 0]), &[], 1_000_000_000);
        top.update(&snapshot([100, 0, 5000]), &[], 2_000_000_000);
        // Rate: 0xb (5000/s) before 0xa (100/s); the unclaimed subflows always last.
        assert_eq!(top.sort, SortKey::Rate);
        assert_eq!(tokens(&top), [Some(0xb), Some(0xa), None]);
        top.handle(Key::Char('r'));
        assert_eq!(tokens(&top), [Some(0xa), Some(0xb), None]);
        top.handle(Key::Char('r'));
        top.handle(Key::Char('s'));
        assert_eq!(top.sort, SortKey::Bytes);
        assert_eq!(tokens(&top), [Some(0xb), Some(0xa), None]);
        top.handle(Key::Char('s'));
        assert_eq!(top.sort, SortKey::Token);
        assert_eq!(tokens(&top), [Some(0xa), Some(0xb), None]);
        top.handle(Key::Char('s'));
        assert_eq!(top.sort, SortKey::Age);
        assert_eq!(tokens(&top), [Some(0xb), Some(0xa), None], "0xb is the older");
        top.handle(Key::Char('s'));
        assert_eq!(top.sort, SortKey::Rate);
    }

    #[test]
    fn subflows_follow_their_connection_in_the_same_order() {
        let mut top = Top::default();
        top.update(&snapshot([0, 0, 0]), &[], 1_000_000_000);
        top.update(&snapshot([100, 900, 0]), &[], 2_000_000_000);
        let rows = top.rows();
        let ids: Vec<RowId> = rows.iter().map(Row::id).collect();
        let sub = |a: [u8; 4], port| {
            RowId::Subflow(SocketAddr::new(a.into(), port), "192.0.2.2:5601".parse().unwrap())
        };
        assert_eq!(
            ids[..3],
            [RowId::Connection(Some(Token(0xa))), sub([198, 51, 100, 1], 40001), sub([192, 0, 2, 1], 40000)]
        );
    }

    #[test]
    fn the_filter_matches_tokens_and_addresses_and_esc_clears_it() {
        let mut top = Top::default();
        top.update(&snapshot([0, 0, 0]), &[], 1);
        top.handle(Key::Char('s'));
        top.handle(Key::Char('s'));
        for c in "/0x0000000b".chars() {
            top.handle(Key::Char(c));
        }
        assert!(top.editing);
        assert_eq!(tokens(&top), [Some(0xb)]);
        top.handle(Key::Enter);
        assert!(!top.editing);
        // Keys sort again once the filter is typed.
        top.handle(Key::Char('r'));
        assert!(top.reversed);
        assert_eq!(tokens(&top), [Some(0xb)]);
        top.handle(Key::Char('/'));
        for c in "198.51".chars() {
            top.handle(Key::Char(c));
        }
        assert_eq!(tokens(&top), [Some(0xa)], "an address of one of 0xa's subflows");
        top.handle(Key::Backspace);
        top.handle(Key::Backspace);
        top.handle(Key::Backspace);
        top.handle(Key::Char('2'));
        assert_eq!(top.filter, "1982");
        assert!(tokens(&top).is_empty());
        top.handle(Key::Esc);
        assert!(top.filter.is_empty() && !top.editing);
        assert_eq!(tokens(&top).len(), 3);
    }

    #[test]
    fn the_selection_moves_stays_on_its_row_and_lands_nearby_when_it_goes() {
        let mut top = Top::default();
        top.update(&snapshot([0, 0, 0]), &[], 1);
        top.handle(Key::Char('s'));
        top.handle(Key::Char('s'));
        // Token order: 0xa, its two subflows, 0xb, its subflow, the unclaimed group, its subflow.
        assert_eq!(top.selected(&top.rows()), Some(0));
        top.handle(Key::Up);
        assert_eq!(top.selected(&top.rows()), Some(0));
        for _ in 0..3 {
            top.handle(Key::Down);
        }
        assert_eq!(top.rows()[3].id(), RowId::Connection(Some(Token(0xb))));
        assert_eq!(top.selected(&top.rows()), Some(3));
        // Reversed, 0xb comes first: the selection follows it.
        top.handle(Key::Char('r'));
        assert_eq!(top.selected(&top.rows()), Some(0));
        for _ in 0..10 {
            top.handle(Key::Down);
        }
        assert_eq!(top.selected(&top.rows()), Some(6), "the last row");
        // Filtered away: the row now at its place, here the last shown.
        top.handle(Key::Char('/'));
        top.handle(Key::Char('b'));
        assert_eq!(top.selected(&top.rows()), Some(1));
    }

    #[test]
    fn congestion_state_is_matched_by_ends_in_either_order() {
        let snapshot = snapshot([0, 0, 0]);
        let cc = SubflowCc {
            token: Token(0xa),
            ends: ["192.0.2.2:5601".parse().unwrap(), "192.0.2.1:40000".parse().unwrap()],
            cwnd: 10,
            ssthresh: 7,
            srtt_us: 1500,
            coupled_cwnd: None,
            coupling: "window",
            pacing_cap: None,
            loss_events: 0,
            merged_losses: 0,
            total_retrans: 0,
            bytes_acked: 0,
            algorithm: "none",
            increase: None,
            decrease: None,
            decision_age_ms: None,
            current: false,
        };
        let mut top = Top::default();
        top.update(&snapshot, &[cc], 1);
        let a = group(&top, 0xa);
        assert_eq!(a.subflows[0].cc.as_ref().map(|cc| cc.srtt_us), Some(1500));
        assert!(a.subflows[1].cc.is_none());
    }

    #[test]
    fn q_and_ctrl_c_quit_but_q_is_text_in_the_filter() {
        let mut top = Top::default();
        assert_eq!(top.handle(Key::Interrupt), Action::Quit);
        top.handle(Key::Char('/'));
        assert_eq!(top.handle(Key::Char('q')), Action::Continue);
        assert_eq!(top.filter, "q");
        assert_eq!(top.handle(Key::Interrupt), Action::Quit);
        top.handle(Key::Esc);
        assert_eq!(top.handle(Key::Char('q')), Action::Quit);
    }
}
