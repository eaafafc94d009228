//! The dashboard's pages, rendered from a snapshot of the cluster (pure: no client, the
//! clock passed in). Server-rendered HTML with inline SVG; numbers carry `data-` attributes
//! so that a test reads exactly what a person sees.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gpu_cloud_api::calendar::Calendar;
use gpu_cloud_api::v1::{GpuInstance, GpuUsageRecord, GpuUser, Phase};
use gpu_cloud_core::policy::figures;
use gpu_cloud_core::policy::records::Recorded;
use gpu_cloud_core::scheduler::NodeGpus;
use jiff::Timestamp;
use kube::ResourceExt;

/// Who looks, as the apiserver authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// Username.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// In the operators' group: sees everything.
    pub operator: bool,
}

impl Viewer {
    /// The viewer acts as `user` (or is an operator).
    pub fn sees_user(&self, user: &GpuUser) -> bool {
        self.operator || user.names(&self.name, &self.groups)
    }
}

/// What a page is drawn from.
pub struct World<'a> {
    /// Every node with GPUs.
    pub nodes: Vec<NodeGpus>,
    /// GPUs held per node, by every instance (a total: no names).
    pub held: BTreeMap<String, u32>,
    /// The instances the viewer may see.
    pub instances: Vec<&'a GpuInstance>,
    /// The users the viewer may see.
    pub users: Vec<&'a GpuUser>,
    /// The usage records (deleted instances' runs) of the users the viewer may see.
    pub records: Vec<&'a GpuUsageRecord>,
    /// The published GPU calendar, if read.
    pub calendar: Option<Calendar>,
    /// Now.
    pub now: Timestamp,
}

impl<'a> World<'a> {
    /// The world as `viewer` may see it: `all_instances` and `all_users` filtered to the
    /// users they act as (everything for an operator); node totals from every instance.
    pub fn for_viewer(
        viewer: &'a Viewer,
        nodes: Vec<NodeGpus>,
        all_instances: &'a [std::sync::Arc<GpuInstance>],
        all_users: &'a [std::sync::Arc<GpuUser>],
        all_records: &'a [std::sync::Arc<GpuUsageRecord>],
        calendar: Option<Calendar>,
        now: Timestamp,
    ) -> Self {
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        for i in all_instances
            .iter()
            .filter(|i| figures::holds_gpus(i) && i.spec.gpu.slice.is_none())
        {
            let Some(s) = i.status.as_ref() else {
                continue;
            };
            // A gang holds `count` on each of its nodes.
            for n in s.placed_nodes() {
                *held.entry(n).or_default() += i.spec.gpu.count;
            }
        }
        let users: Vec<&GpuUser> = all_users
            .iter()
            .map(|u| u.as_ref())
            .filter(|u| viewer.sees_user(u))
            .collect();
        let namespaces: Vec<String> = users
            .iter()
            .map(|u| gpu_cloud_api::namespace_of(&u.name_any()))
            .collect();
        let instances = all_instances
            .iter()
            .map(|i| i.as_ref())
            .filter(|i| viewer.operator || namespaces.contains(&i.namespace().unwrap_or_default()))
            .collect();
        let records = all_records
            .iter()
            .map(|r| r.as_ref())
            .filter(|r| users.iter().any(|u| u.name_any() == r.spec.user))
            .collect();
        World {
            nodes,
            held,
            instances,
            users,
            records,
            calendar,
            now,
        }
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `main` inside the frame (navigation, style, the live-update script).
pub fn page(title: &str, viewer: &Viewer, main: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t} · gpu-cloud</title>
<style>{STYLE}</style></head><body>
<header><b>gpu-cloud</b> <nav><a href="/">Occupancy</a><a href="/queue">Queue</a><a href="/reservations">Reservations</a><a href="/users">Users</a></nav>
<span class="who" data-viewer="{who}">{who}{op}</span></header>
<main id="main">{main}</main>
<script>{SCRIPT}</script></body></html>"#,
        t = esc(title),
        who = esc(&viewer.name),
        op = if viewer.operator { " (operator)" } else { "" },
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}header{background:#1d3557;color:#fff;padding:8px 16px;display:flex;gap:24px;align-items:center}header a{color:#fff;margin-right:12px}.who{margin-left:auto}main{padding:16px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}h2{margin-top:24px}.num{text-align:right}svg text{font-size:11px}";

/// Every 5 s the page fetches itself (only its `main`, by the `X-Fragment` header) and
/// swaps it in: numbers move as the cluster does, without a reload.
const SCRIPT: &str = "setInterval(async()=>{try{const r=await fetch(location.href,{headers:{'X-Fragment':'1'}});if(r.ok){document.getElementById('main').innerHTML=await r.text();document.body.dataset.updated=Date.now();}}catch(e){}},5000);";

/// Occupancy: per GPU model, a heat map of its nodes (the share of GPUs held) and a table.
pub fn occupancy(w: &World) -> String {
    let mut by_model: BTreeMap<String, Vec<&NodeGpus>> = BTreeMap::new();
    for n in w.nodes.iter().filter(|n| n.allocatable > 0) {
        by_model
            .entry(n.model.clone().unwrap_or_else(|| "(unlabelled)".into()))
            .or_default()
            .push(n);
    }
    let mut out = String::from("<h1>GPU occupancy</h1>");
    for (model, nodes) in &by_model {
        let total: u32 = nodes.iter().map(|n| n.allocatable).sum();
        let used: u32 = nodes.iter().map(|n| held_on(w, n)).sum();
        let _ = write!(
            out,
            r#"<h2 data-model="{m}" data-used="{used}" data-total="{total}">{m}: {used} of {total} GPUs held</h2>"#,
            m = esc(model)
        );
        let cols = 8usize;
        let rows = nodes.len().div_ceil(cols);
        let _ = write!(
            out,
            r#"<svg width="{}" height="{}" role="img">"#,
            cols * 130,
            rows * 56
        );
        for (k, n) in nodes.iter().enumerate() {
            let (x, y) = ((k % cols) * 130, (k / cols) * 56);
            let used = held_on(w, n);
            let share = f64::from(used) / f64::from(n.allocatable.max(1));
            let light = 95.0 - 55.0 * share.min(1.0);
            let state = if !n.ready { " (not Ready)" } else { "" };
            let _ = write!(
                out,
                r#"<g data-node="{name}" data-used="{used}" data-total="{t}"><rect x="{x}" y="{y}" width="124" height="50" rx="4" fill="hsl(210,70%,{light:.0}%)" stroke="{stroke}"/><text x="{tx}" y="{ty1}">{name}</text><text x="{tx}" y="{ty2}">{used}/{t} GPUs{state}</text></g>"#,
                name = esc(&n.name),
                t = n.allocatable,
                stroke = if n.ready { "#888" } else { "#c00" },
                tx = x + 6,
                ty1 = y + 18,
                ty2 = y + 36,
            );
        }
        out.push_str("</svg>");
    }
    if by_model.is_empty() {
        out.push_str("<p>No node offers GPUs.</p>");
    }
    out
}

fn held_on(w: &World, n: &NodeGpus) -> u32 {
    w.held.get(&n.name).copied().unwrap_or(0)
}

fn phase_of(i: &GpuInstance) -> Option<Phase> {
    i.status.as_ref().and_then(|s| s.phase)
}

fn link(i: &GpuInstance) -> String {
    let (ns, name) = (i.namespace().unwrap_or_default(), i.name_any());
    format!(
        r#"<a href="/instances/{}/{}">{}/{}</a>"#,
        esc(&ns),
        esc(&name),
        esc(&ns),
        esc(&name)
    )
}

/// The queue of each model: the waiting instances the viewer may see, in order, and why.
pub fn queue(w: &World) -> String {
    let mut by_model: BTreeMap<&str, Vec<&GpuInstance>> = BTreeMap::new();
    for i in w
        .instances
        .iter()
        .filter(|i| matches!(phase_of(i), Some(Phase::Queued) | None))
    {
        by_model.entry(&i.spec.gpu.model).or_default().push(i);
    }
    let mut out = String::from("<h1>Queue</h1>");
    if by_model.is_empty() {
        out.push_str(r#"<p data-waiting="0">Nothing waits.</p>"#);
    }
    for (model, mut list) in by_model {
        list.sort_by_key(|i| {
            i.status
                .as_ref()
                .and_then(|s| s.queue_position)
                .unwrap_or(u32::MAX)
        });
        let _ = write!(
            out,
            r#"<h2 data-model="{m}" data-waiting="{n}">{m}: {n} waiting</h2><table><tr><th>#</th><th>instance</th><th>GPUs</th><th>priority</th><th>why it waits</th></tr>"#,
            m = esc(model),
            n = list.len()
        );
        for i in list {
            let s = i.status.clone().unwrap_or_default();
            let _ = write!(
                out,
                r#"<tr data-instance="{id}"><td class="num">{pos}</td><td>{link}</td><td class="num">{c}</td><td class="num">{p}</td><td>{why}</td></tr>"#,
                id = esc(&format!(
                    "{}/{}",
                    i.namespace().unwrap_or_default(),
                    i.name_any()
                )),
                pos = s.queue_position.map_or("–".into(), |p| p.to_string()),
                link = link(i),
                c = i.spec.gpu.count,
                p = i.spec.priority,
                why = esc(s.message.as_deref().unwrap_or("just booked")),
            );
        }
        out.push_str("</table>");
    }
    out
}

/// Reservations and running bookings on a 24 h timeline per node, and the next free
/// windows of each model (from the published calendar).
pub fn reservations(w: &World) -> String {
    const HOURS: f64 = 24.0;
    const WIDTH: f64 = 960.0;
    let mut out = String::from("<h1>Reservations, the next 24 hours</h1>");
    let x_of = |t: Timestamp| {
        let h = t.duration_since(w.now).as_secs_f64() / 3600.0;
        (h.clamp(0.0, HOURS) / HOURS * WIDTH) + 140.0
    };
    let mut rows: BTreeMap<String, Vec<(&GpuInstance, Timestamp, Timestamp)>> = BTreeMap::new();
    for i in &w.instances {
        let Some(s) = i.status.as_ref() else { continue };
        let node = s.node_name.clone().or(s.reserved_node.clone());
        let (Some(node), Some(end)) = (
            node,
            s.expires_at.or_else(|| {
                let d = gpu_cloud_api::time::parse_duration(&i.spec.duration).ok()?;
                s.starts_at?.checked_add(d).ok()
            }),
        ) else {
            continue;
        };
        if matches!(s.phase, Some(p) if p.is_finished()) {
            continue;
        }
        let start = s.started_at.or(s.starts_at).unwrap_or(w.now);
        rows.entry(node).or_default().push((i, start, end));
    }
    let height = rows.len() * 28 + 30;
    let _ = write!(out, r#"<svg width="1120" height="{height}" role="img">"#);
    for h in (0..=24).step_by(3) {
        let x = 140.0 + f64::from(h) / HOURS * WIDTH;
        let _ = write!(
            out,
            r##"<line x1="{x:.0}" y1="0" x2="{x:.0}" y2="{height}" stroke="#ddd"/><text x="{x:.0}" y="12">+{h}h</text>"##
        );
    }
    for (k, (node, bars)) in rows.iter().enumerate() {
        let y = 20 + k * 28;
        let _ = write!(out, r#"<text x="0" y="{}">{}</text>"#, y + 14, esc(node));
        for (i, start, end) in bars {
            let (x1, x2) = (x_of(*start), x_of(*end));
            let reserved = phase_of(i) == Some(Phase::Reserved);
            let _ = write!(
                out,
                r##"<g data-booking="{id}" data-phase="{ph}"><rect x="{x1:.0}" y="{y}" width="{wd:.0}" height="20" fill="{f}"/><text x="{tx:.0}" y="{ty}">{name} ({c})</text></g>"##,
                id = esc(&format!(
                    "{}/{}",
                    i.namespace().unwrap_or_default(),
                    i.name_any()
                )),
                ph = phase_of(i).map_or("", |p| p.as_str()),
                wd = (x2 - x1).max(2.0),
                f = if reserved { "#f4a261" } else { "#2a9d8f" },
                tx = x1 + 4.0,
                ty = y + 14,
                name = esc(&i.name_any()),
                c = i.spec.gpu.count,
            );
        }
    }
    out.push_str("</svg>");
    if let Some(cal) = &w.calendar {
        out.push_str("<h2>Next free windows (1 GPU for 1 hour)</h2><table><tr><th>model</th><th>from</th><th>node</th></tr>");
        let snapshot = gpu_cloud_core::scheduler::published::snapshot_of(cal, w.now);
        let mut models: Vec<String> = w.nodes.iter().filter_map(|n| n.model.clone()).collect();
        models.sort();
        models.dedup();
        for m in models {
            let slots = gpu_cloud_core::scheduler::next_free_slots(
                &snapshot,
                &m,
                1,
                Some(std::time::Duration::from_secs(3600)),
                w.now,
                3,
            );
            for (at, node) in slots {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&m),
                    gpu_cloud_api::time::show_time(at),
                    esc(&node)
                );
            }
        }
        out.push_str("</table>");
    }
    out
}

/// GPUs `user`'s instances hold now (from the instances themselves: the user's status
/// figures are written at most every few seconds).
fn held_by(w: &World, user: &str) -> u32 {
    let ns = gpu_cloud_api::namespace_of(user);
    figures::held_gpus(
        w.instances
            .iter()
            .copied()
            .filter(|i| i.namespace().as_deref() == Some(ns.as_str())),
    )
}

/// The users the viewer may see, each linked.
pub fn users(w: &World) -> String {
    let mut out = String::from(
        "<h1>Users</h1><table><tr><th>user</th><th>GPUs held</th><th>GPU-hours this month</th><th>cost this month</th></tr>",
    );
    // One pass over the instances, not one per user (100 users x 10,000 instances took
    // 210 ms that way).
    let mut by_ns: BTreeMap<&str, Vec<&GpuInstance>> = BTreeMap::new();
    for i in &w.instances {
        if let Some(ns) = i.metadata.namespace.as_deref() {
            by_ns.entry(ns).or_default().push(i);
        }
    }
    for u in &w.users {
        let s = u.status.clone().unwrap_or_default();
        let ns = gpu_cloud_api::namespace_of(&u.name_any());
        let held = figures::held_gpus(by_ns.get(ns.as_str()).into_iter().flatten().copied());
        let hours = s.usage.as_ref().map_or(0.0, |u| u.current_period.gpu_hours);
        let cost = s.cost.as_ref().map_or("–".to_owned(), |c| {
            format!("{:.2} {}", c.current_period, c.currency)
        });
        let _ = write!(
            out,
            r#"<tr data-user="{n}"><td><a href="/users/{n}">{n}</a></td><td class="num">{g}</td><td class="num">{hours:.3}</td><td class="num">{cost}</td></tr>"#,
            n = esc(&u.name_any()),
            g = held,
            cost = esc(&cost),
        );
    }
    out.push_str("</table>");
    out
}

/// One user: usage, the budget burning down over its period, cost.
pub fn user(w: &World, user: &GpuUser) -> String {
    let name = user.name_any();
    let s = user.status.clone().unwrap_or_default();
    let mut out = format!("<h1>User {}</h1>", esc(&name));
    let usage = s.usage.clone().unwrap_or_default();
    let _ = write!(
        out,
        r#"<table><tr><th>GPUs held</th><td class="num" data-gpus-in-use="{g}">{g}</td></tr><tr><th>GPU-hours this month</th><td class="num" data-gpu-hours="{h:.3}">{h:.3}</td></tr><tr><th>GPU-hours in all</th><td class="num">{l:.3}</td></tr><tr><th>energy this month, kWh</th><td class="num">{e:.3}</td></tr>"#,
        g = held_by(w, &name),
        h = usage.current_period.gpu_hours,
        l = usage.lifetime.gpu_hours,
        e = usage.current_period.energy_kwh,
    );
    if let Some(c) = &s.cost {
        let _ = write!(
            out,
            r#"<tr><th>cost this month</th><td class="num" data-cost="{v:.2}">{v:.2} {cur}</td></tr>"#,
            v = c.current_period,
            cur = esc(&c.currency)
        );
    }
    out.push_str("</table>");
    if let Some(b) = &s.budget {
        let _ = write!(
            out,
            r#"<h2 data-budget-remaining="{r:.3}">Budget: {r:.3} of {l} GPU-hours left until {end}</h2>"#,
            r = b.remaining_gpu_hours,
            l = b.limit_gpu_hours,
            end = gpu_cloud_api::time::show_time(b.period_end),
        );
        out.push_str(&burn_down(w, user, b));
    }
    let mine: Vec<&&GpuInstance> = w
        .instances
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(gpu_cloud_api::namespace_of(&name).as_str()))
        .collect();
    out.push_str("<h2>Instances</h2><table><tr><th>instance</th><th>phase</th><th>GPUs</th><th>model</th></tr>");
    for i in mine {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            link(i),
            phase_of(i).map_or("", |p| p.as_str()),
            i.spec.gpu.count,
            esc(&i.spec.gpu.model)
        );
    }
    out.push_str("</table>");
    out
}

/// The budget left over its period so far: the user's figures (live instances and the
/// runs their usage records hold, the controller's own sum) at 48 points of the period.
fn burn_down(w: &World, user: &GpuUser, b: &gpu_cloud_api::v1::BudgetView) -> String {
    let name = user.name_any();
    let ns = gpu_cloud_api::namespace_of(&name);
    let mine: Vec<&GpuInstance> = w
        .instances
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(ns.as_str()))
        .copied()
        .collect();
    let recorded = Recorded::of(w.records.iter().copied().filter(|r| r.spec.user == name));
    let figures = gpu_cloud_core::policy::objects::user_figures(user, &mine, &recorded, w.now);
    let start = b.period_start;
    let span = w.now.duration_since(start).as_secs_f64().max(1.0);
    let points = 48;
    let used_at = |t: Timestamp| -> f64 {
        let bounds = gpu_cloud_core::policy::Bounds { start, end: t };
        gpu_cloud_core::policy::objects::gpu_hours_in(&figures, bounds)
    };
    let (width, height) = (600.0, 160.0);
    let mut path = String::new();
    for k in 0..=points {
        let t = start
            .checked_add(jiff::SignedDuration::from_secs_f64(
                span * f64::from(k) / f64::from(points),
            ))
            .unwrap_or(w.now);
        let left = (b.limit_gpu_hours - used_at(t)).max(0.0);
        let x = 40.0 + width * f64::from(k) / f64::from(points);
        let y = 10.0 + height * (1.0 - left / b.limit_gpu_hours.max(1e-9));
        let _ = write!(path, "{}{x:.1},{y:.1} ", if k == 0 { "M" } else { "L" });
    }
    format!(
        r##"<svg width="660" height="190" role="img" data-chart="burn-down"><line x1="40" y1="10" x2="40" y2="170" stroke="#888"/><line x1="40" y1="170" x2="640" y2="170" stroke="#888"/><text x="0" y="14">{l}</text><text x="0" y="170">0</text><text x="40" y="185">{s}</text><text x="560" y="185">now</text><path d="{path}" fill="none" stroke="#e63946" stroke-width="2"/></svg>"##,
        l = b.limit_gpu_hours,
        s = gpu_cloud_api::time::show_time(start),
    )
}

/// One instance: its status, conditions, events and runs.
pub fn instance(
    i: &GpuInstance,
    events: &[(String, String, String, String)],
    now: Timestamp,
) -> String {
    let s = i.status.clone().unwrap_or_default();
    let id = format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any());
    let mut out = format!(
        r#"<h1 data-instance="{id}" data-phase="{ph}">{id}: {ph}</h1>"#,
        id = esc(&id),
        ph = s.phase.map_or("new", |p| p.as_str())
    );
    let row = |k: &str, v: String| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    out.push_str("<table>");
    out.push_str(&row(
        "GPUs",
        format!("{} x {}", i.spec.gpu.count, i.spec.gpu.model),
    ));
    out.push_str(&row("node", s.node_name.clone().unwrap_or_default()));
    out.push_str(&row(
        "started",
        s.started_at
            .map(gpu_cloud_api::time::show_time)
            .unwrap_or_default(),
    ));
    out.push_str(&row(
        "expires",
        s.expires_at
            .map(gpu_cloud_api::time::show_time)
            .unwrap_or_default(),
    ));
    out.push_str(&row("message", s.message.clone().unwrap_or_default()));
    if let Some(u) = &s.usage {
        out.push_str(&format!(
            r#"<tr><th>GPU-seconds</th><td data-gpu-seconds="{g:.1}">{g:.1}</td></tr><tr><th>mean utilization</th><td>{a:.1} %</td></tr>"#,
            g = u.gpu_seconds,
            a = u.avg_utilization
        ));
    }
    out.push_str("</table><h2>Conditions</h2><table><tr><th>type</th><th>status</th><th>reason</th><th>message</th><th>since</th></tr>");
    for c in &s.conditions {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.type_),
            esc(&c.status),
            esc(&c.reason),
            esc(&c.message),
            gpu_cloud_api::time::show_time(c.last_transition_time)
        );
    }
    out.push_str("</table><h2>Usage over its runs</h2>");
    let runs = figures::runs(i, now);
    let most = runs.iter().map(|r| r.gpu_seconds).fold(1.0, f64::max);
    let _ = write!(
        out,
        r#"<svg width="620" height="{}" role="img">"#,
        runs.len() * 26 + 6
    );
    for (k, r) in runs.iter().enumerate() {
        let y = k * 26;
        let _ = write!(
            out,
            r##"<rect x="0" y="{y}" width="{w:.0}" height="20" fill="#457b9d"/><text x="6" y="{ty}" fill="#fff">{g:.0} GPU-s from {s}</text>"##,
            w = (r.gpu_seconds / most * 600.0).max(2.0),
            ty = y + 14,
            g = r.gpu_seconds,
            s = gpu_cloud_api::time::show_time(r.started_at),
        );
    }
    out.push_str("</svg><h2>Events</h2><table><tr><th>type</th><th>reason</th><th>message</th><th>at</th></tr>");
    for (t, r, m, at) in events {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(t),
            esc(r),
            esc(m),
            esc(at)
        );
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A user with a 100 GPU-hour budget from midnight, and a record of a deleted
    /// instance's 10 GPU-hours (02:00-07:00 on 2 GPUs).
    fn fixtures() -> (GpuUser, GpuUsageRecord) {
        let user: GpuUser = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ann"},
            "spec": {"subjects": [{"kind": "User", "name": "ann"}]},
            "status": {"budget": {
                "limitGpuHours": 100.0, "usedGpuHours": 10.0, "remainingGpuHours": 90.0,
                "periodStart": "2026-12-01T00:00:00Z", "periodEnd": "2027-01-01T00:00:00Z",
                "exhausted": false}},
        }))
        .unwrap();
        let record: GpuUsageRecord = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ann-2026-12-0"},
            "spec": {"user": "ann", "period": "2026-12", "runs": [{
                "uid": "u1", "instance": "gpu-ann/gone",
                "model": "L4", "gpus": 2,
                "startedAt": "2026-12-01T02:00:00Z", "endedAt": "2026-12-01T07:00:00Z",
                "gpuSeconds": 36000.0, "energyJoules": 0.0}]},
        }))
        .unwrap();
        (user, record)
    }

    /// The y of the burn-down's points (10 is the whole budget, 170 none of it).
    fn ys(svg: &str) -> Vec<f64> {
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        d.split_whitespace()
            .map(|p| p.rsplit(',').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn the_burn_down_counts_what_deleted_instances_used_when_they_ran() {
        let (user, record) = fixtures();
        let viewer = Viewer {
            name: "ann".into(),
            groups: vec![],
            operator: false,
        };
        let users = [Arc::new(user)];
        let records = [Arc::new(record)];
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let world = World::for_viewer(&viewer, vec![], &[], &users, &records, None, now);
        assert_eq!(world.records.len(), 1);
        let page = super::user(&world, &users[0]);
        let y = ys(&page);
        assert_eq!(y.len(), 49);
        // Full until 02:00 (point 8 of 48 over 12 h), 90 left from 07:00 on (point 28).
        assert!(
            (y[0] - 10.0).abs() < 0.05 && (y[8] - 10.0).abs() < 0.05,
            "{y:?}"
        );
        let ninety = 10.0 + 160.0 * 0.1;
        assert!(y[28..].iter().all(|v| (v - ninety).abs() < 0.05), "{y:?}");
        assert!(
            y[10] > 10.0 && y[10] < ninety,
            "burning while it ran: {y:?}"
        );

        // Another viewer sees neither the user nor the record.
        let bob = Viewer {
            name: "bob".into(),
            groups: vec![],
            operator: false,
        };
        let world = World::for_viewer(&bob, vec![], &[], &users, &records, None, now);
        assert!(world.records.is_empty() && world.users.is_empty());
    }
}
