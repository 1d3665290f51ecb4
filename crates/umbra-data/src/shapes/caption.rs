//! Captions of a [`Scene`] in several templates, and the parser that reads a prompt back into the
//! [`Target`] it asks for (so a recognizer can score a generated image against its prompt).

use super::*;

/// Caption templates per scene kind; [`caption`] takes the template index modulo this.
pub const NUM_TEMPLATES: usize = 5;

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "a red circle", "a small red circle": the noun phrase of one object, with an article.
fn noun_phrase(o: &ShapeObject, with_size: bool) -> String {
    let words = if with_size {
        format!("{} {} {}", o.size.name(), o.colour.name(), o.shape.name())
    } else {
        format!("{} {}", o.colour.name(), o.shape.name())
    };
    format!("{} {words}", article(&words))
}

/// The caption of `scene` in template `template % NUM_TEMPLATES`.
///
/// One object: "a red circle", "a small red circle", "a red circle on the left", "a small red circle
/// at the top", "a large red circle in the middle on a dark background". Two objects: "a red circle
/// to the left of a blue square", the same with sizes, the same said from the other object ("a blue
/// square to the right of a red circle"), "... on a light background", and "a small red circle above
/// a large blue square".
pub fn caption(scene: &Scene, template: usize) -> String {
    let t = template % NUM_TEMPLATES;
    let bg = format!(" on a {} background", scene.background.name());
    match (scene.relation, scene.objects.as_slice()) {
        (Some(r), [a, b]) => match t {
            0 => format!("{} {} {}", noun_phrase(a, false), r.phrase(), noun_phrase(b, false)),
            1 | 4 => format!("{} {} {}", noun_phrase(a, true), r.phrase(), noun_phrase(b, true)),
            2 => format!("{} {} {}", noun_phrase(b, false), r.inverse().phrase(), noun_phrase(a, false)),
            _ => format!("{} {} {}{bg}", noun_phrase(a, false), r.phrase(), noun_phrase(b, false)),
        },
        (_, objects) => {
            let Some(o) = objects.first() else { return String::new() };
            let place = o.place().phrase();
            match t {
                0 => noun_phrase(o, false),
                1 => noun_phrase(o, true),
                2 => format!("{} {place}", noun_phrase(o, false)),
                3 => format!("{} {place}", noun_phrase(o, true)),
                _ => format!("{} {place}{bg}", noun_phrase(o, true)),
            }
        }
    }
}

/// Split a prompt into lowercase words (letters only).
fn words(prompt: &str) -> Vec<String> {
    prompt
        .to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Find the relation phrase in `w`: (start, end, relation) of "to the left of" / "left of" / "above" / ...
fn find_relation(w: &[String]) -> Option<(usize, usize, Relation)> {
    for i in 0..w.len() {
        let rel = match w[i].as_str() {
            "above" | "over" => Some((i, i + 1, Relation::Above)),
            "below" | "under" | "beneath" | "underneath" => Some((i, i + 1, Relation::Below)),
            "left" | "right" if w.get(i + 1).map(String::as_str) == Some("of") => {
                // Swallow a preceding "to the" / "on the".
                let mut s = i;
                if s >= 1 && w[s - 1] == "the" {
                    s -= 1;
                    if s >= 1 && (w[s - 1] == "to" || w[s - 1] == "on") {
                        s -= 1;
                    }
                }
                Some((s, i + 2, if w[i] == "left" { Relation::LeftOf } else { Relation::RightOf }))
            }
            _ => None,
        };
        if rel.is_some() {
            return rel;
        }
    }
    None
}

/// One object phrase ("a small red circle on the left"): exactly one shape and one colour word.
fn parse_object(w: &[String], allow_place: bool) -> Option<ObjectTarget> {
    let mut shape = None;
    let mut colour = None;
    let mut size = None;
    let mut place = None;
    for (i, word) in w.iter().enumerate() {
        if let Some(s) = ShapeKind::parse(word) {
            if shape.replace(s).is_some() {
                return None;
            }
        } else if let Some(c) = Colour::parse(word) {
            if colour.replace(c).is_some() {
                return None;
            }
        } else if let Some(s) = SizeKind::parse(word) {
            size = Some(s);
        } else if allow_place {
            let p = match word.as_str() {
                "left" => Some(Place::Left),
                "right" => Some(Place::Right),
                "top" | "upper" => Some(Place::Top),
                "bottom" | "lower" => Some(Place::Bottom),
                "middle" | "center" | "centre" | "centered" | "centred" => Some(Place::Center),
                _ => None,
            };
            // "background" words after a colour-like word are not places.
            if p.is_some() && w.get(i + 1).is_none_or(|n| n != "background") {
                place = p;
            }
        }
    }
    Some(ObjectTarget { shape: shape?, colour: colour?, size, place })
}

/// The attributes a prompt names, or `None` if it is not a shapes prompt (no shape or no colour for
/// an object, two shapes without a relation, ...). Reads every [`caption`] template back exactly, and
/// free variants ("big", "left of", "under", "on a black background").
pub fn parse_prompt(prompt: &str) -> Option<Target> {
    let mut w = words(prompt);
    // The background phrase: "on a dark background" / "dark background".
    let mut background = None;
    if let Some(k) = w.iter().position(|x| x == "background") {
        background = Background::parse(w.get(k.wrapping_sub(1))?);
        background?;
        let mut s = k - 1;
        while s > 0 && matches!(w[s - 1].as_str(), "a" | "an" | "the" | "on" | "in" | "against" | "with") {
            s -= 1;
        }
        w.drain(s..=k);
    }
    match find_relation(&w) {
        Some((s, e, relation)) => {
            let a = parse_object(&w[..s], false)?;
            let b = parse_object(&w[e..], false)?;
            Some(Target { objects: vec![a, b], relation: Some(relation), background })
        }
        None => Some(Target { objects: vec![parse_object(&w, true)?], relation: None, background }),
    }
}

/// `n` prompts with their targets for evaluating a text-to-image model: held-out combinations
/// (`held_out = true`) or seen ones; seeded, every caption template in turn.
pub fn eval_prompts(held_out: bool, n: usize, seed: u64) -> Vec<(String, Target)> {
    (0..n)
        .map(|i| {
            let mut rng = SplitMix64::new(derive_seed(&[seed, PROMPT_STREAM, held_out as u64, i as u64]));
            let s = sample_scene_where(&mut rng, held_out);
            let p = caption(&s, i % NUM_TEMPLATES);
            let t = parse_prompt(&p).expect("every caption template parses");
            (p, t)
        })
        .collect()
}
