//! A one-page HTML report a person would rather look at than read: backlog over time,
//! attempts by outcome per round, dead letters by error and reason, and the backoff
//! schedule in force. Self-contained (inline SVG and CSS): it fetches nothing.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::RecordBatch;

use crate::error::Result;
use crate::monitor::query;
use crate::policy::RetryPolicy;
use crate::store::AsOf;
use crate::store::columns::{int_at, string_at, time_at};
use crate::store::{Store, Table};

/// Most table versions sampled for the backlog chart.
const MAX_BACKLOG_POINTS: u64 = 120;

/// Writes the report for the tables under `root` as one HTML page.
pub async fn report(store: &Store, policy: &RetryPolicy, now: DateTime<Utc>) -> Result<String> {
    let status = crate::status::status(store, now).await?;

    // Backlog over time: the queue's row count at (a sample of) its versions.
    let latest = store.table(Table::RetryQueue).version().unwrap_or(0);
    let step = latest / MAX_BACKLOG_POINTS + 1;
    let mut backlog = Vec::new();
    let mut past = store.reopen().await?;
    let mut version = 0;
    while version <= latest {
        // Versions whose files a vacuum removed cannot be read: leave them out.
        if past.travel(AsOf::Version(version)).await.is_ok()
            && let Ok(batches) = query(&past, "SELECT COUNT(*) FROM retry_queue").await
        {
            let at = store
                .table(Table::RetryQueue)
                .snapshot()
                .ok()
                .and_then(|s| s.version_timestamp(version));
            backlog.push((version, at, first_int(&batches, 0)));
        }
        version = if version == latest {
            latest + 1
        } else {
            (version + step).min(latest)
        };
    }

    let per_round = query(
        store,
        "SELECT worker, round, MIN(started_at) AS at, \
         SUM(CASE WHEN outcome = 'success' THEN 1 ELSE 0 END) AS success, \
         SUM(CASE WHEN outcome = 'transient' THEN 1 ELSE 0 END) AS transient, \
         SUM(CASE WHEN outcome = 'permanent' THEN 1 ELSE 0 END) AS permanent \
         FROM attempts WHERE outcome NOT IN ('redrive', 'cancel') GROUP BY worker, round ORDER BY at, worker, round",
    )
    .await?;
    let dead = query(
        store,
        "SELECT reason, COALESCE(error_msg, '(none)') AS error_msg, COUNT(*) AS n \
         FROM dead_letter_queue GROUP BY reason, error_msg ORDER BY n DESC LIMIT 20",
    )
    .await?;

    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>retrylake report</title>
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#1d2433;padding:0 1rem}}
h1{{font-size:1.6rem;margin-bottom:.2rem}} h2{{font-size:1.1rem;margin-top:2.2rem;border-bottom:1px solid #dde3ee;padding-bottom:.3rem}}
.cards{{display:flex;gap:.8rem;flex-wrap:wrap;margin-top:1rem}} .card{{background:#f4f6fb;border-radius:10px;padding:.7rem 1rem;min-width:120px}}
.card b{{display:block;font-size:1.5rem}} .muted{{color:#68738a;font-size:.9rem}}
table{{border-collapse:collapse;margin-top:.6rem}} td,th{{padding:.25rem .8rem;text-align:left;border-bottom:1px solid #eef1f6}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.paused{{background:#fff4e0;border-left:4px solid #e6a23c;padding:.6rem 1rem;margin-top:1rem}}
.legend span{{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin:0 .3rem 0 1rem;vertical-align:middle}}
</style></head><body>
<h1>retrylake</h1><div class="muted">{root} &middot; report at {now}</div>
<div class="cards">
<div class="card"><b>{waiting}</b>waiting</div><div class="card"><b>{due}</b>due now</div>
<div class="card"><b>{snoozed}</b>snoozed (no retry counted)</div>
<div class="card"><b>{final_count}</b>final</div><div class="card"><b>{dead_count}</b>dead letters</div>
<div class="card"><b>{recovered}</b>recovered after a retry</div></div>"#,
        root = escape(store.root()),
        now = now.format("%Y-%m-%d %H:%M:%S UTC"),
        waiting = status.waiting,
        due = status.due,
        snoozed = status.snoozed,
        final_count = status.final_count,
        dead_count = status.dead,
        recovered = recovered_share(store).await?,
    );

    if let Some(p) = &status.paused {
        let until = p.until.map_or_else(
            || "until resumed".to_owned(),
            |t| format!("until {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        );
        let _ = write!(
            html,
            "<p class=\"paused\"><b>Paused</b> {} by {} at {}{}</p>",
            escape(&until),
            escape(&p.by),
            p.at.format("%Y-%m-%d %H:%M:%S UTC"),
            p.reason
                .as_deref()
                .map(|r| format!(": {}", escape(r)))
                .unwrap_or_default()
        );
    }
    html.push_str("<h2>Backlog over time</h2><div class=\"muted\">Rows in retry_queue at each table version (from the Delta history).</div>");
    let points: Vec<(String, f64)> = backlog
        .iter()
        .map(|(v, at, n)| {
            let label = at.and_then(DateTime::from_timestamp_millis).map_or_else(
                || format!("v{v}"),
                |t| format!("v{v} {}", t.format("%H:%M:%S")),
            );
            (label, *n as f64)
        })
        .collect();
    html.push_str(&line_chart(&points));

    html.push_str("<h2>Attempts per round</h2><div class=\"legend\"><span style=\"background:#2f9e6e\"></span>success<span style=\"background:#e6a23c\"></span>transient<span style=\"background:#d9534f\"></span>permanent</div>");
    let mut rounds = Vec::new();
    for b in &per_round {
        for i in 0..b.num_rows() {
            let worker = string_at(b.column(0), i).unwrap_or_default();
            let label = format!("{worker} #{}", int_at(b.column(1), i).unwrap_or(0));
            let at = time_at(b.column(2), i)
                .map(|t| t.format("%H:%M").to_string())
                .unwrap_or_default();
            let counts = [3, 4, 5].map(|c| int_at(b.column(c), i).unwrap_or(0) as f64);
            rounds.push((format!("{label} {at}"), counts));
        }
    }
    html.push_str(&stacked_bars(&rounds));

    html.push_str(
        "<h2>Dead letters</h2><table><tr><th>reason</th><th>error</th><th>count</th></tr>",
    );
    let mut any = false;
    for b in &dead {
        for i in 0..b.num_rows() {
            any = true;
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
                escape(&string_at(b.column(0), i).unwrap_or_default()),
                escape(&string_at(b.column(1), i).unwrap_or_default()),
                int_at(b.column(2), i).unwrap_or(0)
            );
        }
    }
    if !any {
        html.push_str("<tr><td colspan=\"3\" class=\"muted\">none</td></tr>");
    }
    html.push_str("</table>");

    html.push_str("<h2>Backoff schedule in force</h2><table><tr><th>failure</th><th>retry_count</th><th>waits</th></tr>");
    for n in 1..=policy.max_retries().min(12) {
        let _ = write!(
            html,
            "<tr><td>{n}</td><td class=\"n\">{n}</td><td>{}</td></tr>",
            humantime::format_duration(policy.base_delay(n))
        );
    }
    let _ = writeln!(
        html,
        "<tr><td>{}</td><td class=\"n\">{}</td><td>dead-lettered (retries_exhausted)</td></tr></table>\
         <p class=\"muted\">base {} &times; {}<sup>n</sup>, capped at {}, jitter {:?}.</p></body></html>",
        policy.max_retries() + 1,
        policy.max_retries(),
        humantime::format_duration(policy.base()),
        policy.multiplier(),
        humantime::format_duration(policy.max_backoff()),
        policy.jitter()
    );
    Ok(html)
}

/// The share of finished records that failed at least once and still succeeded, as text.
async fn recovered_share(store: &Store) -> Result<String> {
    let batches = query(
        store,
        "SELECT SUM(CASE WHEN attempts > 1 THEN 1 ELSE 0 END) AS recovered, COUNT(*) AS finals FROM final_results",
    )
    .await?;
    let (recovered, finals) = (first_int(&batches, 0), first_int(&batches, 1));
    Ok(if finals == 0 {
        "-".to_owned()
    } else {
        format!("{:.0}%", 100.0 * recovered as f64 / finals as f64)
    })
}

fn first_int(batches: &[RecordBatch], column: usize) -> i64 {
    batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| int_at(b.column(column), 0))
        .unwrap_or(0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 940.0;
const HEIGHT: f64 = 220.0;

fn line_chart(points: &[(String, f64)]) -> String {
    if points.is_empty() {
        return "<p class=\"muted\">no data</p>".into();
    }
    let max = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let x = |i: usize| 40.0 + (WIDTH - 60.0) * i as f64 / (points.len().max(2) - 1) as f64;
    let y = |v: f64| 10.0 + (HEIGHT - 40.0) * (1.0 - v / max);
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
        .collect();
    let mut svg = format!(
        "<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" aria-label=\"backlog over time\">\
         <line x1=\"40\" y1=\"{b}\" x2=\"{WIDTH}\" y2=\"{b}\" stroke=\"#cfd6e4\"/>\
         <text x=\"4\" y=\"16\" font-size=\"11\" fill=\"#68738a\">{max}</text><text x=\"4\" y=\"{b}\" font-size=\"11\" fill=\"#68738a\">0</text>\
         <polyline fill=\"none\" stroke=\"#3b6fd8\" stroke-width=\"2.5\" points=\"{}\"/>",
        path.join(" "),
        b = HEIGHT - 30.0
    );
    for (i, (label, v)) in points.iter().enumerate() {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#3b6fd8\"><title>{}: {v}</title></circle>",
            x(i),
            y(*v),
            escape(label)
        );
    }
    let last = points.len() - 1;
    let _ = write!(
        svg,
        "<text x=\"40\" y=\"{h}\" font-size=\"11\" fill=\"#68738a\">{}</text><text x=\"{WIDTH}\" y=\"{h}\" font-size=\"11\" fill=\"#68738a\" text-anchor=\"end\">{}</text></svg>",
        escape(&points[0].0),
        escape(&points[last].0),
        h = HEIGHT - 8.0
    );
    svg
}

fn stacked_bars(rows: &[(String, [f64; 3])]) -> String {
    if rows.is_empty() {
        return "<p class=\"muted\">no rounds yet</p>".into();
    }
    let max = rows
        .iter()
        .map(|r| r.1.iter().sum::<f64>())
        .fold(1.0, f64::max);
    let slot = (WIDTH - 60.0) / rows.len() as f64;
    let bar = (slot * 0.8).max(1.0);
    let colors = ["#2f9e6e", "#e6a23c", "#d9534f"];
    let mut svg = format!(
        "<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" aria-label=\"attempts per round\">"
    );
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"16\" font-size=\"11\" fill=\"#68738a\">{max}</text>"
    );
    for (i, (label, counts)) in rows.iter().enumerate() {
        let mut top = HEIGHT - 30.0;
        for (c, count) in counts.iter().enumerate() {
            let h = (HEIGHT - 40.0) * count / max;
            top -= h;
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {count}</title></rect>",
                40.0 + slot * i as f64,
                colors[c],
                escape(label)
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"40\" y=\"{h}\" font-size=\"11\" fill=\"#68738a\">{}</text><text x=\"{WIDTH}\" y=\"{h}\" font-size=\"11\" fill=\"#68738a\" text-anchor=\"end\">{}</text></svg>",
        escape(&rows[0].0),
        escape(&rows[rows.len() - 1].0),
        h = HEIGHT - 8.0
    );
    svg
}
