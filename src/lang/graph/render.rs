//! The graph as text: Mermaid, Graphviz DOT, or SVG laid out by layout-rs, with a run's way
//! or the counts of many runs marked on it.

use super::{graph, Graph, NodeKind, Path, Verdict};
use crate::lang::model::Scenario;

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', "<br/>")
}

/// The graph of `sc` as `mermaid`, `dot` or `svg` text.
pub fn render(sc: &Scenario, format: &str) -> Result<String, String> {
    let g = graph(sc);
    match format {
        "mermaid" => Ok(mermaid(&g)),
        "dot" => Ok(dot(&g, None)),
        "svg" => svg(&g, None),
        other => Err(format!("no graph format '{other}' (mermaid, dot, svg)")),
    }
}

/// Mermaid `flowchart` text.
pub fn mermaid(g: &Graph) -> String {
    let mut out = String::from("flowchart TD\n");
    for n in &g.nodes {
        let t = mermaid_text(&n.text);
        let shape = match n.kind {
            NodeKind::Trigger => format!("([\"{t}\"])"),
            NodeKind::End => format!("((\"{t}\"))"),
            NodeKind::Called => format!("[[\"{t}\"]]"),
            NodeKind::Step(_) => format!("[\"{t}\"]"),
        };
        out.push_str(&format!("    {}{shape}\n", n.id));
    }
    for e in &g.edges {
        let arrow = if e.dashed { "-.->" } else { "-->" };
        if e.label.is_empty() {
            out.push_str(&format!("    {} {arrow} {}\n", e.from, e.to));
        } else {
            out.push_str(&format!(
                "    {} {arrow}|\"{}\"| {}\n",
                e.from,
                mermaid_text(&e.label),
                e.to
            ));
        }
    }
    out
}

fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn node_of(id: &str) -> Option<usize> {
    id.strip_prefix('s').and_then(|n| n.parse().ok())
}

/// Graphviz DOT text; with a run's `path`, its steps are filled by verdict (green, red,
/// grey) and the edges it took drawn bold.
pub fn dot(g: &Graph, path: Option<&Path>) -> String {
    let mut out = format!("digraph \"{}\" {{\n", dot_text(&g.title));
    for n in &g.nodes {
        let mut attrs = vec![format!("label=\"{}\"", dot_text(&n.text))];
        match n.kind {
            NodeKind::Trigger | NodeKind::End => attrs.push("shape=ellipse".into()),
            _ => attrs.push("shape=box".into()),
        }
        if let (Some(p), NodeKind::Step(i)) = (path, n.kind) {
            let fill = match p.steps.get(&i).map(|(v, _)| v) {
                Some(Verdict::Ok) => Some("#b7e4c7"),
                Some(Verdict::Failed) => Some("#f4a6a6"),
                Some(Verdict::Skipped) => Some("#dddddd"),
                None => None,
            };
            if let Some(f) = fill {
                attrs.push("style=filled".into());
                attrs.push(format!("fillcolor=\"{f}\""));
            }
        }
        out.push_str(&format!("  {} [{}];\n", n.id, attrs.join(", ")));
    }
    for e in &g.edges {
        let mut attrs = Vec::new();
        if !e.label.is_empty() {
            attrs.push(format!("label=\"{}\"", dot_text(&e.label)));
        }
        if e.dashed {
            attrs.push("style=dashed".into());
        }
        let key = {
            let from = if e.from == "trigger" {
                None
            } else {
                node_of(&e.from)
            };
            let to = node_of(&e.to);
            ((e.from == "trigger" || from.is_some()) && (to.is_some() || e.to == "finish"))
                .then_some((from, to))
        };
        let taken = path.is_some_and(|p| key.is_some_and(|k| p.edges.contains(&k)));
        if let (Some(p), Some(k)) = (path, key) {
            if !p.counts.is_empty() {
                let n = p.counts.get(&k).copied().unwrap_or(0);
                let label = if e.label.is_empty() {
                    format!("×{n}")
                } else {
                    format!("{} ×{n}", e.label)
                };
                attrs.retain(|a| !a.starts_with("label="));
                attrs.insert(0, format!("label=\"{}\"", dot_text(&label)));
                if n > 0 {
                    attrs.push("color=\"#2d6a4f\"".into());
                }
            }
        }
        if taken {
            attrs.push("penwidth=3".into());
            attrs.push("color=\"#2d6a4f\"".into());
        }
        if attrs.is_empty() {
            out.push_str(&format!("  {} -> {};\n", e.from, e.to));
        } else {
            out.push_str(&format!(
                "  {} -> {} [{}];\n",
                e.from,
                e.to,
                attrs.join(", ")
            ));
        }
    }
    out.push_str("}\n");
    out
}

/// The graph laid out as SVG; with a run's `path`, each step it reached shows what the run
/// saw there on hover.
pub fn svg(g: &Graph, path: Option<&Path>) -> Result<String, String> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};
    let text = dot(g, path);
    let parsed = DotParser::new(&text).process()?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&parsed);
    let mut visual = builder.get();
    let mut writer = SVGWriter::new();
    visual.do_it(false, false, false, &mut writer);
    let mut out = writer.finalize();
    for n in &g.nodes {
        let (NodeKind::Step(i), Some(p)) = (n.kind, path) else {
            continue;
        };
        let Some((_, hover)) = p.steps.get(&i) else {
            continue;
        };
        // The node's text element: a title inside it is its tooltip.
        let first = xml_escape(n.text.lines().next().unwrap_or(""));
        let Some(at) = out.find(&format!(">{first}</tspan>")) else {
            continue;
        };
        let Some(start) = out[..at].rfind("<text") else {
            continue;
        };
        let Some(end) = out[start..].find('>').map(|e| start + e + 1) else {
            continue;
        };
        out.insert_str(end, &format!("<title>{}</title>", xml_escape(hover)));
    }
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
