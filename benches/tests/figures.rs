//! `benches/figures.sh`'s plots: a tiny sweep run in process, written and drawn, then every SVG
//! parsed as XML and checked for its title, axes and labelled curves.

use plush_benches::figures::{jobs, plots, read_csv, samples_of, spread, tick, write_plot, Sizes};

#[test]
fn a_tiny_sweep_draws_every_plot_as_valid_svg_with_title_axes_and_curves() {
    let sizes = Sizes {
        nodes: vec![10.0, 20.0],
        one_seed_from: f64::INFINITY,
        fixed_nodes: 20,
        local: vec![10.0],
        seeds: vec![1, 2],
    };
    let jobs = jobs(&sizes);
    let mut samples = Vec::new();
    for job in &jobs {
        for &x in &job.xs {
            for &seed in &sizes.seeds {
                // `plush run --local` is not run here: its curves are empty, their rows "failed".
                let report = plush_benches::figures::scenario_for(&job.args(x, seed))
                    .map(|sc| serde_json::to_value(plush_sim::run(&sc)).expect("a report encodes"));
                samples.extend(samples_of(job, x, seed, report.as_ref()));
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("plush-figures-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut svgs = 0;
    for plot in plots() {
        let commands = vec![format!("plush {}", jobs[0].template)];
        let path = write_plot(&dir, &plot, &samples, &commands).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: not XML: {e}", path.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{}", plot.name);
        let texts: Vec<String> =
            doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text().map(str::to_owned)).collect();
        let has = |s: &str| texts.iter().any(|t| t.contains(s));
        assert!(has(plot.title), "{}: no title in {texts:?}", plot.name);
        assert!(has(plot.x_label) && has(plot.y_label), "{}: axes not described", plot.name);
        // Every curve with a point is drawn and named in the legend; so is every mark.
        let mine: Vec<_> = samples.iter().filter(|s| s.plot == plot.name).collect();
        let drawn: Vec<&str> = {
            let mut v: Vec<&str> = mine.iter().filter(|s| s.y.is_some()).map(|s| s.series).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        assert!(!drawn.is_empty(), "{}: no curve has a point", plot.name);
        for name in &drawn {
            assert!(has(name), "{}: curve {name:?} not labelled", plot.name);
        }
        for m in &plot.marks {
            assert!(has(m.label), "{}: mark {:?} not labelled", plot.name, m.label);
        }
        let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
        assert!(lines >= drawn.len(), "{}: {lines} polylines for {} curves", plot.name, drawn.len());
        // Tick labels on both axes: numbers.
        assert!(texts.iter().filter(|t| t.trim().parse::<f64>().is_ok() || t.contains(',')).count() >= 4);
        // The data and the commands sit next to the plot; the data reads back.
        assert!(std::fs::read_to_string(dir.join(format!("{}.txt", plot.name))).unwrap().contains(&commands[0]));
        assert_eq!(read_csv(&dir, &plot).len(), mine.len(), "{}: CSV rows", plot.name);
        svgs += 1;
    }
    assert!(svgs >= 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn points_are_medians_with_their_spread_and_ticks_read_well() {
    assert_eq!(spread(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
    assert_eq!(spread(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    assert_eq!(tick(1_000_000.0), "1,000,000");
    assert_eq!(tick(100.0), "100");
    assert_eq!(tick(0.25), "0.25");
    assert_eq!(tick(0.0), "0");
}
