//! The result rows and how they are printed (a Markdown table, or JSON), and
//! the statistics every row reports: median and p99.

pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) ours: f64,
    pub(crate) ours_p99: Option<f64>,
    pub(crate) floor: Option<f64>,
    pub(crate) note: String,
}

/// The rows as a JSON array, `ratio` included.
pub(crate) fn print_json(rows: &[Row]) {
    let out: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "unit": r.unit, "ours": r.ours, "ours_p99": r.ours_p99,
                "floor": r.floor, "ratio": r.floor.map(|f| r.ours / f), "note": r.note,
            })
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

pub(crate) fn print_table(rows: &[Row], quick: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "mister-smith bench{} — {} cores, {cpu}",
        if quick {
            " (quick: small samples, not for the README)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measurement | ours | floor | ours / floor | notes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let ours = match r.ours_p99 {
            Some(p) => format!("{} (p99 {})", fmt(r.ours, r.unit), fmt(p, r.unit)),
            None => fmt(r.ours, r.unit),
        };
        let (floor, ratio) = match r.floor {
            Some(f) => (fmt(f, r.unit), format!("{:.2}", r.ours / f)),
            None => ("–".into(), "–".into()),
        };
        println!("| {} | {ours} | {floor} | {ratio} | {} |", r.name, r.note);
    }
}

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.3} ms"),
        "MB" => format!("{v:.2} MB"),
        "/s" => format!("{v:.0}/s"),
        u => format!("{v:.2} {u}"),
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

pub(crate) fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}
