//! Scoring images against `shapes` prompts with the trained recognizer (GenEval-style, Ghosh et al. 2023),
//! per prompt: object count; each named attribute (shape, colour, size, place, background) of each object;
//! **binding** of a two-object prompt (both objects present with their own colour on their own shape, in
//! either order); **axis** (two objects side by side or one above the other, as asked); **relation** (binding
//! in the prompt's order along the prompt's axis); and **whole prompt** (everything named is right). Reported
//! for seen and held-out combinations separately.

use crate::recognizer_trainer::{Recognized, TrainedRecognizer};
use crate::TrainError;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use umbra_data::shapes::Target;

/// Correct out of total for one attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub correct: usize,
    pub total: usize,
}

impl Tally {
    fn add(&mut self, ok: Option<bool>) {
        if let Some(ok) = ok {
            self.total += 1;
            self.correct += ok as usize;
        }
    }

    /// correct / total (NaN-free: 0 when nothing was scored; check `total`).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// How one image did on its prompt; `None` where the prompt does not ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptScore {
    /// Objects the prompt names (1 or 2).
    pub objects: usize,
    pub count: bool,
    /// Per named object (1 or 2): shape, colour, size (if named), place (if named).
    pub shape: [Option<bool>; 2],
    pub colour: [Option<bool>; 2],
    pub size: [Option<bool>; 2],
    pub place: Option<bool>,
    pub background: Option<bool>,
    /// Two-object prompts: both colour–shape pairs present, in either order.
    pub binding: Option<bool>,
    /// Two-object prompts: two objects recognized on the prompt's axis (side by side or one above the other).
    pub axis: Option<bool>,
    /// Two-object prompts: binding in the prompt's order along the prompt's axis.
    pub relation: Option<bool>,
    /// Everything the prompt names is right.
    pub whole: bool,
}

/// Score one recognized image against its target.
///
/// Objects are matched to the recognized slots by the prompt's relation when there is one (objects[0]
/// is slot 0 for "left of"/"above", slot 1 otherwise), else by the assignment with the most matching
/// colour–shape attributes; attributes are compared under that matching.
pub fn score_one(r: &Recognized, t: &Target) -> PromptScore {
    let mut s =
        PromptScore { objects: t.objects.len(), count: r.objects.len() == t.objects.len(), ..Default::default() };
    let attr_matches = |ti: usize, ri: usize| -> usize {
        match (t.objects.get(ti), r.objects.get(ri)) {
            (Some(a), Some(b)) => (a.shape == b.shape) as usize + (a.colour == b.colour) as usize,
            _ => 0,
        }
    };
    // The slot of each target object under the best colour–shape assignment.
    let best: Vec<usize> = if t.objects.len() == 2 && r.objects.len() == 2 {
        if attr_matches(0, 0) + attr_matches(1, 1) >= attr_matches(0, 1) + attr_matches(1, 0) {
            vec![0, 1]
        } else {
            vec![1, 0]
        }
    } else if r.objects.len() == 2 {
        vec![if attr_matches(0, 1) > attr_matches(0, 0) { 1 } else { 0 }]
    } else {
        vec![0; t.objects.len()]
    };
    let pair_ok = |assign: &[usize]| {
        t.objects
            .iter()
            .zip(assign)
            .all(|(o, &k)| r.objects.get(k).is_some_and(|p| p.shape == o.shape && p.colour == o.colour))
    };
    // The assignment the relation implies (two-object prompts).
    let rel_assign = t.relation.map(|rel| if rel.first_is_object0() { vec![0, 1] } else { vec![1, 0] });
    let assign = match &rel_assign {
        Some(a) if r.objects.len() == 2 && pair_ok(a) => a.clone(),
        _ => best.clone(),
    };
    for (k, o) in t.objects.iter().enumerate().take(2) {
        let p = r.objects.get(assign[k]);
        s.shape[k] = Some(p.is_some_and(|p| p.shape == o.shape));
        s.colour[k] = Some(p.is_some_and(|p| p.colour == o.colour));
        s.size[k] = o.size.map(|sz| p.is_some_and(|p| p.size == sz));
    }
    if t.objects.len() == 1 {
        s.place = t.objects[0].place.map(|pl| r.objects.len() == 1 && r.place == Some(pl));
    }
    s.background = t.background.map(|b| r.background == b);
    if let (Some(rel), Some(ra)) = (t.relation, &rel_assign) {
        let bound = r.objects.len() == 2 && (pair_ok(&[0, 1]) || pair_ok(&[1, 0]));
        s.binding = Some(bound);
        let on_axis = r.objects.len() == 2 && r.axis == Some(rel.axis());
        s.axis = Some(on_axis);
        s.relation = Some(on_axis && pair_ok(ra));
    }
    let all = |xs: &[Option<bool>]| xs.iter().all(|x| x.unwrap_or(true));
    s.whole = s.count
        && all(&s.shape)
        && all(&s.colour)
        && all(&s.size)
        && s.place.unwrap_or(true)
        && s.background.unwrap_or(true)
        && s.relation.unwrap_or(true);
    s
}

/// Accuracies of a group of prompts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreGroup {
    pub prompts: usize,
    pub count: Tally,
    pub shape: Tally,
    pub colour: Tally,
    pub size: Tally,
    pub place: Tally,
    pub background: Tally,
    pub binding: Tally,
    /// Reports written before this tally existed read it as empty.
    #[serde(default)]
    pub axis: Tally,
    pub relation: Tally,
    pub whole: Tally,
}

impl ScoreGroup {
    pub fn add(&mut self, s: &PromptScore) {
        self.prompts += 1;
        self.count.add(Some(s.count));
        for k in 0..2 {
            self.shape.add(s.shape[k]);
            self.colour.add(s.colour[k]);
            self.size.add(s.size[k]);
        }
        self.place.add(s.place);
        self.background.add(s.background);
        self.binding.add(s.binding);
        self.axis.add(s.axis);
        self.relation.add(s.relation);
        self.whole.add(Some(s.whole));
    }

    /// `(name, tally)` of every metric, in report order.
    pub fn tallies(&self) -> [(&'static str, Tally); 10] {
        [
            ("count", self.count),
            ("shape", self.shape),
            ("colour", self.colour),
            ("size", self.size),
            ("place", self.place),
            ("background", self.background),
            ("binding", self.binding),
            ("axis", self.axis),
            ("relation", self.relation),
            ("whole_prompt", self.whole),
        ]
    }

    /// The mean of the per-attribute accuracies (shape, colour, size, place, background) that were scored.
    pub fn attribute_accuracy(&self) -> f64 {
        let t: Vec<Tally> = [self.shape, self.colour, self.size, self.place, self.background]
            .into_iter()
            .filter(|t| t.total > 0)
            .collect();
        if t.is_empty() {
            return 0.0;
        }
        t.iter().map(Tally::accuracy).sum::<f64>() / t.len() as f64
    }
}

/// Scores of a batch of prompts: all, seen combinations, held-out combinations, and one-object prompts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreReport {
    pub all: ScoreGroup,
    pub seen: ScoreGroup,
    pub held_out: ScoreGroup,
    /// Prompts naming one object (seen and held-out): where shape and colour accuracy are read alone.
    #[serde(default)]
    pub single: ScoreGroup,
}

impl ScoreReport {
    /// Add one image's score; `held_out` says which group it belongs to.
    pub fn add(&mut self, s: &PromptScore, held_out: bool) {
        self.all.add(s);
        if held_out {
            self.held_out.add(s);
        } else {
            self.seen.add(s);
        }
        if s.objects == 1 {
            self.single.add(s);
        }
    }

    /// Flat `(name, value)` terms for metrics logs: `whole_prompt`, `seen/binding`, `held_out/colour`, ...
    /// (only metrics with at least one scored prompt).
    pub fn terms(&self) -> Vec<(String, f64)> {
        let mut v = Vec::new();
        for (prefix, g) in
            [("", &self.all), ("seen/", &self.seen), ("held_out/", &self.held_out), ("single/", &self.single)]
        {
            for (name, t) in g.tallies() {
                if t.total > 0 {
                    v.push((format!("{prefix}{name}"), t.accuracy()));
                }
            }
        }
        v
    }

    /// A plain-text table: one row per metric, columns all / seen / held-out (accuracy % and counts).
    pub fn table(&self) -> String {
        let cell = |t: Tally| {
            if t.total == 0 {
                "-".to_string()
            } else {
                format!("{:.1}% ({}/{})", 100.0 * t.accuracy(), t.correct, t.total)
            }
        };
        let mut s = format!("{:<13} {:>20} {:>20} {:>20} {:>20}\n", "metric", "all", "seen", "held-out", "one object");
        let (a, b, c, d) = (self.all.tallies(), self.seen.tallies(), self.held_out.tallies(), self.single.tallies());
        for k in 0..a.len() {
            s.push_str(&format!(
                "{:<13} {:>20} {:>20} {:>20} {:>20}\n",
                a[k].0,
                cell(a[k].1),
                cell(b[k].1),
                cell(c[k].1),
                cell(d[k].1)
            ));
        }
        s
    }
}

/// Score images `[B, 3, H, W]` in [0, 1] against their targets (one per image) with the recognizer.
pub fn score(recognizer: &TrainedRecognizer, images: &Tensor, targets: &[Target]) -> Result<ScoreReport, TrainError> {
    let b = images.dim(0)?;
    if b != targets.len() {
        return Err(TrainError::Invalid(format!("score: {b} images but {} targets", targets.len())));
    }
    let rec = recognizer.recognize(images)?;
    Ok(score_recognized(&rec, targets))
}

/// Score already recognized images against their targets.
pub fn score_recognized(rec: &[Recognized], targets: &[Target]) -> ScoreReport {
    let mut report = ScoreReport::default();
    for (r, t) in rec.iter().zip(targets) {
        report.add(&score_one(r, t), t.is_held_out());
    }
    report
}
