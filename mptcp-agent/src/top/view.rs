//! The widgets: a title line, the table, the selected row in full, the keys (or the filter being
//! typed). Columns that do not fit the width are dropped, least needed first; none wraps.

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table, TableState, Wrap},
};

use super::model::{Group, Row, SubflowRow, Top};

/// What the title line says besides the model.
pub struct Title<'a> {
    pub instance: &'a str,
    pub interval_ms: u64,
}

/// The path column never gets narrower than this (an IPv4 subflow's two ends).
const MIN_PATH: u16 = 24;

/// One column besides the path; `level` 1 is kept down to the narrowest terminal, 4 only on wide
/// ones.
struct Column {
    title: &'static str,
    width: u16,
    level: u8,
    cell: fn(&Top, &Row<'_>) -> String,
}

const COLUMNS: &[Column] = &[
    Column { title: "state", width: 5, level: 1, cell: state },
    Column { title: "c2s/s", width: 5, level: 1, cell: |_, row| rate(flows(row).0.rate) },
    Column { title: "s2c/s", width: 5, level: 1, cell: |_, row| rate(flows(row).1.rate) },
    Column { title: "c2s", width: 4, level: 3, cell: |_, row| human(flows(row).0.bytes as f64) },
    Column { title: "s2c", width: 4, level: 3, cell: |_, row| human(flows(row).1.bytes as f64) },
    Column { title: "rtt", width: 4, level: 2, cell: rtt },
    Column { title: "cwnd", width: 4, level: 2, cell: cwnd },
    Column { title: "fl", width: 2, level: 1, cell: flags },
    Column { title: "kind", width: 7, level: 4, cell: kind },
    Column { title: "hmac", width: 8, level: 4, cell: hmac },
    Column { title: "age", width: 4, level: 4, cell: age },
];

/// The columns that fit `width` with the path at least [`MIN_PATH`] wide: whole levels, the
/// most needed first.
fn columns(width: u16) -> Vec<&'static Column> {
    let mut shown = Vec::new();
    for level in 1..=4 {
        let more: Vec<&Column> = COLUMNS.iter().filter(|c| c.level <= level).collect();
        let needed: u16 = MIN_PATH + more.iter().map(|c| c.width + 1).sum::<u16>();
        if needed > width {
            break;
        }
        shown = more;
    }
    shown
}

pub fn draw(frame: &mut Frame<'_>, top: &Top, title: &Title<'_>) {
    let [title_area, table_area, detail_area, keys_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let rows = top.rows();
    let order = if top.reversed { "reversed" } else { "" };
    let heading = format!(
        "mptcp-agent top  {}  every {} ms  {} conns  sort {} {order}",
        title.instance,
        title.interval_ms,
        top.connections(),
        top.sort.name()
    );
    frame.render_widget(Paragraph::new(heading).style(Style::new().add_modifier(Modifier::BOLD)), title_area);

    let columns = columns(table_area.width);
    let widths: Vec<Constraint> = std::iter::once(Constraint::Fill(1))
        .chain(columns.iter().map(|c| Constraint::Length(c.width)))
        .collect();
    let header = TableRow::new(std::iter::once("path").chain(columns.iter().map(|c| c.title)))
        .style(Style::new().add_modifier(Modifier::REVERSED));
    let lines = rows.iter().map(|row| {
        let cells = std::iter::once(path(row)).chain(columns.iter().map(|c| (c.cell)(top, row)));
        let style = match row {
            Row::Connection(_) => Style::new().add_modifier(Modifier::BOLD),
            Row::Subflow(_) => Style::new(),
        };
        TableRow::new(cells.map(Cell::from)).style(style)
    });
    let table = Table::new(lines, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let selected = top.selected(&rows);
    let mut state = TableState::new().with_selected(selected);
    frame.render_stateful_widget(table, table_area, &mut state);

    let detail = selected.map(|i| detail(top, &rows[i])).unwrap_or_default();
    frame.render_widget(Paragraph::new(detail).wrap(Wrap { trim: true }), detail_area);

    let keys = if top.editing {
        Line::from(format!("filter: {}_  (Enter keeps it, Esc clears it)", top.filter))
    } else if !top.filter.is_empty() {
        Line::from(format!("filter: {}  (/ new, Esc clears)  s sort r reverse q quit", top.filter))
    } else {
        Line::from("s sort r reverse / filter Esc clear up/down select q quit")
    };
    frame.render_widget(Paragraph::new(keys), keys_area);
}

fn flows(row: &Row<'_>) -> (super::model::Flow, super::model::Flow) {
    match row {
        Row::Connection(group) => (group.c2s, group.s2c),
        Row::Subflow(subflow) => (subflow.c2s, subflow.s2c),
    }
}

fn path(row: &Row<'_>) -> String {
    match row {
        Row::Connection(Group { connection: Some(c), subflows, .. }) => {
            format!("{} {}", c.server_token, count(subflows.len()))
        }
        Row::Connection(Group { connection: None, subflows, .. }) => {
            format!("unclaimed {}", count(subflows.len()))
        }
        Row::Subflow(s) => format!(" {}>{}", s.view.client, s.view.server),
    }
}

fn count(subflows: usize) -> String {
    if subflows == 1 { "1 subflow".to_owned() } else { format!("{subflows} subflows") }
}

/// The subflow's state as `subflows` names it, shortened to five characters; a connection is
/// open until a DATA_FIN, MP_FASTCLOSE or MP_TCPRST.
fn state(_: &Top, row: &Row<'_>) -> String {
    let name = match row {
        Row::Connection(Group { connection: Some(c), .. }) if c.tcprst => "rst",
        Row::Connection(Group { connection: Some(c), .. }) if c.fastclose => "fastc",
        Row::Connection(Group { connection: Some(c), .. }) if c.data_fin.c2s || c.data_fin.s2c => "d-fin",
        Row::Connection(Group { connection: Some(_), .. }) => "open",
        Row::Connection(Group { connection: None, .. }) => "",
        Row::Subflow(s) => match s.view.state {
            "established" => "estab",
            "syn-sent" => "syn-s",
            "syn-received" => "syn-r",
            "closing" => "fin",
            "closed" => "close",
            other => other,
        },
    };
    name.to_owned()
}

fn subflow_cc<'a>(row: &Row<'a>) -> Option<&'a crate::cc::SubflowCc> {
    match row {
        Row::Subflow(SubflowRow { cc, .. }) => cc.as_ref(),
        Row::Connection(_) => None,
    }
}

/// Smoothed RTT, unit included: 45u (us), 1.2m, 12m (ms), 1.5s.
fn rtt(_: &Top, row: &Row<'_>) -> String {
    subflow_cc(row).map_or_else(String::new, |cc| srtt(cc.srtt_us))
}

fn srtt(us: u32) -> String {
    let ms = f64::from(us) / 1000.0;
    match ms {
        ..0.9995 => format!("{us}u"),
        ..9.95 => format!("{ms:.1}m"),
        ..999.5 => format!("{ms:.0}m"),
        _ => format!("{:.1}s", ms / 1000.0),
    }
}

fn cwnd(_: &Top, row: &Row<'_>) -> String {
    subflow_cc(row).map_or_else(String::new, |cc| human(f64::from(cc.coupled_cwnd.unwrap_or(cc.cwnd))))
}

/// B: a backup subflow; F: fallen back to TCP.
fn flags(_: &Top, row: &Row<'_>) -> String {
    let (backup, fallback) = match row {
        Row::Connection(group) => (false, group.connection.as_ref().is_some_and(|c| c.fallback.is_some())),
        Row::Subflow(s) => (s.view.backup, s.view.fallback.is_some()),
    };
    [(backup, 'B'), (fallback, 'F')].iter().filter(|(on, _)| *on).map(|(_, c)| c).collect()
}

fn kind(_: &Top, row: &Row<'_>) -> String {
    match row {
        Row::Subflow(s) => s.view.kind.to_owned(),
        Row::Connection(_) => String::new(),
    }
}

fn hmac(_: &Top, row: &Row<'_>) -> String {
    match row {
        Row::Subflow(s) if s.view.kind == "join" => s.view.hmac.to_owned(),
        _ => String::new(),
    }
}

fn age(top: &Top, row: &Row<'_>) -> String {
    let first_seen = match row {
        Row::Connection(group) => group.first_seen_ns,
        Row::Subflow(s) => s.view.first_seen_ns,
    };
    duration(top.age_ns(first_seen))
}

fn duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Bytes per second, `-` before the second read.
fn rate(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), human)
}

/// At most four characters: 999, 1.2k, 12k, 123k, 1.2M, ...
pub fn human(mut value: f64) -> String {
    let mut units = ["", "k", "M", "G", "T", "P"].iter();
    let mut unit = units.next().copied().unwrap_or_default();
    while value >= 999.5 {
        let Some(next) = units.next() else { break };
        value /= 1000.0;
        unit = next;
    }
    if unit.is_empty() || value >= 9.95 { format!("{value:.0}{unit}") } else { format!("{value:.1}{unit}") }
}

/// The selected row in full: what the columns shorten or leave out.
fn detail(top: &Top, row: &Row<'_>) -> String {
    match row {
        Row::Connection(Group { connection: Some(c), subflows, c2s, s2c, first_seen_ns }) => {
            let closing: Vec<&str> = [
                (c.data_fin.c2s || c.data_fin.s2c, "data-fin"),
                (c.fastclose, "fastclose"),
                (c.tcprst, "tcprst"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
            format!(
                "token {} client token {} v{} {} fallback {} age {}; wire c2s {} B s2c {} B; \
                 data c2s {} B s2c {} B; reinjected {} B; closing {}",
                c.server_token,
                crate::dataplane::tables::Token::or_dash(c.client_token),
                c.version,
                count(subflows.len()),
                c.fallback.unwrap_or("no"),
                duration(top.age_ns(*first_seen_ns)),
                c2s.bytes,
                s2c.bytes,
                c.data_bytes.c2s,
                c.data_bytes.s2c,
                c.reinjected_bytes.c2s + c.reinjected_bytes.s2c,
                if closing.is_empty() { "-".to_owned() } else { closing.join(",") }
            )
        }
        Row::Connection(Group { connection: None, subflows, .. }) => {
            format!("{} no tracked connection claims (half-open, or no token learned)", count(subflows.len()))
        }
        Row::Subflow(s) => {
            let v = &s.view;
            let cc = s.cc.as_ref().map_or_else(
                || "no sock_ops record (run the daemon with --cc on the sending host)".to_owned(),
                |cc| {
                    format!(
                        "cwnd {} ssthresh {} srtt {} us losses {} (+{} merged) retrans {} cc {}",
                        cc.cwnd,
                        cc.ssthresh,
                        cc.srtt_us,
                        cc.loss_events,
                        cc.merged_losses,
                        cc.total_retrans,
                        cc.algorithm
                    )
                },
            );
            format!(
                "{} > {} {} {} hmac {} backup {} fallback {}; c2s {} B {} pkts, s2c {} B {} pkts; {cc}",
                v.client,
                v.server,
                v.kind,
                v.state,
                v.hmac,
                if v.backup { "yes" } else { "no" },
                v.fallback.unwrap_or("no"),
                v.c2s.bytes,
                v.c2s.packets,
                v.s2c.bytes,
                v.s2c.packets
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers_fit_four_characters() {
        let cases = [
            (0.0, "0"),
            (999.0, "999"),
            (999.6, "1.0k"),
            (1234.0, "1.2k"),
            (12_345.0, "12k"),
            (999_999.0, "1.0M"),
        ];
        for (value, text) in cases {
            assert_eq!(human(value), text, "{value}");
        }
        for exponent in 0..18 {
            let value = 9.96 * 10f64.powi(exponent);
            assert!(human(value).len() <= 4, "{value}: {}", human(value));
        }
    }

    #[test]
    fn rtts_carry_their_unit_in_four_characters() {
        let cases = [
            (45, "45u"),
            (999, "999u"),
            (1000, "1.0m"),
            (12_345, "12m"),
            (999_000, "999m"),
            (1_500_000, "1.5s"),
        ];
        for (us, text) in cases {
            assert_eq!(srtt(us), text, "{us}");
        }
    }

    /// The screen of `top` drawn `width` columns wide, line by line.
    fn screen(top: &Top, width: u16) -> Vec<String> {
        let mut terminal =
            ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, 24)).expect("terminal");
        terminal
            .draw(|frame| draw(frame, top, &Title { instance: "default", interval_ms: 1000 }))
            .expect("draw");
        let buffer = terminal.backend().buffer();
        (0..24).map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>()).collect()
    }

    #[test]
    fn at_80x24_every_column_and_whole_ipv4_paths_show() {
        let mut top = Top::default();
        top.update(&super::super::model::tests::snapshot([0, 0, 0]), &[], 1_000_000_000);
        top.update(&super::super::model::tests::snapshot([2_500_000, 1234, 0]), &[], 2_000_000_000);
        let lines = screen(&top, 80);
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["path", "state", "c2s/s", "s2c/s", "c2s", "s2c", "rtt", "cwnd", "fl"]
        );
        assert!(lines[2].starts_with("0x0000000a 2 subflows "), "{lines:#?}");
        let fields: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(fields[3..8], ["open", "2.5M", "0", "2.5M", "20"], "{lines:#?}");
        assert!(lines[3].starts_with(" 192.0.2.1:40000>192.0.2.2:5601 "), "{lines:#?}");
        assert!(lines[4].starts_with(" 198.51.100.1:40001>192.0.2.2:5601 "), "{lines:#?}");
        assert!(lines[3].split_whitespace().skip(1).eq(["estab", "2.5M", "0", "2.5M", "10"]), "{lines:#?}");
        assert!(lines[23].contains("q quit"), "{lines:#?}");
        // The first row is selected: its details above the keys.
        assert!(lines[20].starts_with("token 0x0000000a"), "{lines:#?}");
        // 60 columns: the byte totals go, the rates stay.
        let narrow = screen(&top, 60);
        assert_eq!(
            narrow[1].split_whitespace().collect::<Vec<_>>(),
            ["path", "state", "c2s/s", "s2c/s", "rtt", "cwnd", "fl"]
        );
        // The path takes what is left, 29 columns here: cut, not wrapped; the keys still fit.
        assert!(narrow[4].starts_with(" 198.51.100.1:40001>192.0.2.2 estab"), "{narrow:#?}");
        assert!(narrow[23].trim_end().ends_with("q quit"), "{narrow:#?}");
    }

    #[test]
    fn narrower_terminals_drop_whole_levels_of_columns() {
        let titles = |width| columns(width).iter().map(|c| c.title).collect::<Vec<_>>();
        assert_eq!(titles(80), ["state", "c2s/s", "s2c/s", "c2s", "s2c", "rtt", "cwnd", "fl"]);
        assert_eq!(titles(60), ["state", "c2s/s", "s2c/s", "rtt", "cwnd", "fl"]);
        assert_eq!(titles(50), ["state", "c2s/s", "s2c/s", "fl"]);
        assert_eq!(titles(140).len(), COLUMNS.len());
        // Everything shown fits: no column wraps.
        for width in 20..200 {
            let used: u16 = MIN_PATH + columns(width).iter().map(|c| c.width + 1).sum::<u16>();
            assert!(used <= width.max(MIN_PATH), "{width}");
        }
    }
}
