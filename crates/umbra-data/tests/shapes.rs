//! The `shapes` captioned dataset: determinism, ground truth, held-out split, captions that parse back,
//! rendering that puts the named colour where the object is, and generation speed.

use umbra_data::captioned::load_captioned;
use umbra_data::shapes::{
    caption, eval_prompts, parse_prompt, render, Background, Colour, ObjectTarget, Place, Relation, Scene, ShapeKind,
    ShapeObject, SizeKind, HELD_OUT_ARRANGEMENTS, HELD_OUT_PAIRS, NUM_TEMPLATES,
};
use umbra_data::Split;

fn one(shape: ShapeKind, colour: Colour, size: SizeKind, position: (f32, f32), bg: Background) -> Scene {
    Scene { objects: vec![ShapeObject { shape, colour, size, position }], relation: None, background: bg }
}

#[test]
fn same_seed_same_dataset_other_seed_other_dataset() {
    let a = load_captioned("shapes:300", 32, Split::Train, 7).unwrap();
    let b = load_captioned("shapes:300", 32, Split::Train, 7).unwrap();
    let c = load_captioned("shapes:300", 32, Split::Train, 8).unwrap();
    assert_eq!(a.images.images, b.images.images);
    assert_eq!(a.captions, b.captions);
    assert_ne!(a.captions, c.captions);
    assert_eq!(a.len(), 300);
    assert_eq!(a.images.shape(), [300, 3, 32, 32]);
    assert_eq!((a.images.num_classes, a.images.labels.iter().all(|&l| l == 0)), (1, true));
    assert!(a.images.images.iter().all(|v| (0.0..=1.0).contains(v)));
    // A prefix of a larger dataset is the smaller dataset: each row has its own stream.
    let big = load_captioned("shapes:600", 32, Split::Train, 7).unwrap();
    assert_eq!(big.take(300).captions, a.captions);
    assert_eq!(a.captions_of(&[2, 0]), vec![a.captions[2].clone(), a.captions[0].clone()]);
}

#[test]
fn held_out_combinations_never_appear_in_train_and_fill_half_the_test_split() {
    let train = load_captioned("shapes:4000", 32, Split::Train, 0).unwrap();
    let scenes = train.scenes.as_ref().unwrap();
    let mut pairs_seen = std::collections::HashSet::new();
    let (mut singles, mut rels) = (0, [0usize; 4]);
    for s in scenes {
        assert!(!s.is_held_out(), "train scene {s:?} is held out");
        for o in &s.objects {
            assert!(!HELD_OUT_PAIRS.contains(&(o.colour, o.shape)));
            pairs_seen.insert((o.colour, o.shape));
        }
        match s.relation {
            None => singles += 1,
            Some(r) => rels[Relation::ALL.iter().position(|&x| x == r).unwrap()] += 1,
        }
    }
    // Every one of the 40 - 5 seen pairs shows up; one and two objects about half each; all relations.
    assert_eq!(pairs_seen.len(), 35);
    assert!((1700..2300).contains(&singles), "{singles} single-object scenes of 4000");
    assert!(rels.iter().all(|&r| r > 300), "{rels:?}");
    let test = load_captioned("shapes:4000", 32, Split::Test, 0).unwrap();
    assert_eq!(test.len(), 2000);
    let ts = test.scenes.as_ref().unwrap();
    for (i, s) in ts.iter().enumerate() {
        assert_eq!(s.is_held_out(), i % 2 == 0, "test row {i}");
    }
    // Both kinds of held-out combination are represented: pairs and arrangements.
    let arrangement = |s: &Scene| {
        let c = s.canonical_objects();
        s.axis().is_some_and(|ax| HELD_OUT_ARRANGEMENTS.contains(&(ax, c[0].shape, c[1].shape)))
    };
    assert!(ts.iter().filter(|s| arrangement(s)).count() > 50);
    // No test image equals a train image.
    assert_ne!(test.images.image(1), train.images.image(1));
}

#[test]
fn every_caption_template_parses_back_to_the_scene() {
    let d = load_captioned("shapes:500", 32, Split::Test, 3).unwrap();
    for s in d.scenes.as_ref().unwrap() {
        let full = s.target();
        for t in 0..NUM_TEMPLATES {
            let c = caption(s, t);
            let p = parse_prompt(&c).unwrap_or_else(|| panic!("caption `{c}` does not parse"));
            assert_eq!(p.objects.len(), s.objects.len(), "{c}");
            // Normalise the prompt's relation to the scene's object order.
            let (objs, rel) = if p.relation.is_some() && p.objects[0].shape != s.objects[0].shape
                || p.relation.is_some() && p.objects[0].colour != s.objects[0].colour
            {
                (vec![p.objects[1], p.objects[0]], p.relation.map(Relation::inverse))
            } else {
                (p.objects.clone(), p.relation)
            };
            assert_eq!(rel, s.relation, "{c}");
            for (o, f) in objs.iter().zip(&full.objects) {
                assert_eq!((o.shape, o.colour), (f.shape, f.colour), "{c}");
                if let Some(sz) = o.size {
                    assert_eq!(Some(sz), f.size, "{c}");
                }
                if let Some(pl) = o.place {
                    assert_eq!(Some(pl), f.place, "{c}");
                }
            }
            if let Some(bg) = p.background {
                assert_eq!(bg, s.background, "{c}");
            }
            assert_eq!(p.is_held_out(), s.is_held_out(), "{c}");
        }
    }
}

#[test]
fn free_prompts_parse() {
    let p = parse_prompt("A big purple star on the left, on a black background.").unwrap();
    assert_eq!(
        p.objects,
        vec![ObjectTarget {
            shape: ShapeKind::Star,
            colour: Colour::Purple,
            size: Some(SizeKind::Large),
            place: Some(Place::Left)
        }]
    );
    assert_eq!(p.background, Some(Background::Dark));
    let q = parse_prompt("a green triangle above a yellow circle").unwrap();
    assert_eq!(q.relation, Some(Relation::Above));
    assert_eq!((q.objects[0].shape, q.objects[1].colour), (ShapeKind::Triangle, Colour::Yellow));
    let r = parse_prompt("red circle left of blue square").unwrap();
    assert_eq!(r.relation, Some(Relation::LeftOf));
    assert!(parse_prompt("a photo of a cat").is_none());
    assert!(parse_prompt("a red circle and a blue square").is_none(), "two objects need a relation");
    assert!(parse_prompt("a circle").is_none(), "an object needs a colour");
}

#[test]
fn eval_prompts_are_seeded_and_split_by_held_out() {
    let a = eval_prompts(true, 40, 1);
    assert_eq!(a, eval_prompts(true, 40, 1));
    assert!(a.iter().all(|(_, t)| t.is_held_out()));
    let b = eval_prompts(false, 40, 1);
    assert!(b.iter().all(|(_, t)| !t.is_held_out()));
    assert!(b.iter().any(|(_, t)| t.relation.is_some()) && b.iter().any(|(_, t)| t.relation.is_none()));
}

#[test]
fn render_puts_the_colour_at_the_centre_and_the_background_in_the_corners() {
    for shape in ShapeKind::ALL {
        for colour in Colour::ALL {
            let s = one(shape, colour, SizeKind::Small, (0.28, 0.5), Background::Light);
            let img = render(&s, 32);
            // The centre pixel (9, 16) has the object's colour, a far pixel the background.
            let at = |x: usize, y: usize| [img[y * 32 + x], img[1024 + y * 32 + x], img[2048 + y * 32 + x]];
            let rgb = colour.rgb();
            let c = at(9, 16);
            assert!((0..3).all(|k| (c[k] - rgb[k]).abs() < 1e-5), "{shape:?} {colour:?}: centre {c:?}");
            let bg = Background::Light.rgb();
            assert_eq!(at(28, 3), bg);
            assert_eq!(at(25, 25), bg);
        }
    }
    // Areas: large ≈ (0.23/0.15)² = 2.35 × small; the shapes differ in area (they are not all blobs).
    let area = |shape, size| {
        let img = render(&one(shape, Colour::Red, size, (0.5, 0.5), Background::Dark), 64);
        // Red channel minus background, summed: the covered area in pixels.
        img[..4096].iter().map(|v| (v - 0.10) / 0.80).sum::<f32>()
    };
    let (cs, cl) = (area(ShapeKind::Circle, SizeKind::Small), area(ShapeKind::Circle, SizeKind::Large));
    let want = std::f32::consts::PI * (0.88 * 0.15 * 64.0f32).powi(2);
    assert!((cs - want).abs() / want < 0.01, "small circle area {cs} vs πr² = {want}");
    assert!((cl / cs - (0.23f32 / 0.15).powi(2)).abs() < 0.05, "{}", cl / cs);
    let areas: Vec<f32> = ShapeKind::ALL.iter().map(|&s| area(s, SizeKind::Large)).collect();
    for i in 0..areas.len() {
        for j in 0..i {
            assert!((areas[i] - areas[j]).abs() / areas[i] > 0.05, "{areas:?}");
        }
    }
}

#[test]
fn pairs_do_not_overlap_and_keep_their_order() {
    let d = load_captioned("shapes:2000", 32, Split::Train, 5).unwrap();
    for s in d.scenes.as_ref().unwrap() {
        if let (Some(r), [a, b]) = (s.relation, s.objects.as_slice()) {
            let (dx, dy) = (b.position.0 - a.position.0, b.position.1 - a.position.1);
            let gap = match r {
                Relation::LeftOf => dx,
                Relation::RightOf => -dx,
                Relation::Above => dy,
                Relation::Below => -dy,
            };
            assert!(gap > a.size.radius() + b.size.radius(), "{s:?}");
            assert_ne!((a.shape, a.colour), (b.shape, b.colour));
        }
    }
}

#[test]
fn generates_thousands_of_images_per_second() {
    let t = std::time::Instant::now();
    let d = load_captioned("shapes:5000", 32, Split::Train, 0).unwrap();
    let per_sec = d.len() as f64 / t.elapsed().as_secs_f64();
    eprintln!("shapes: {per_sec:.0} images/s at 32x32");
    assert!(per_sec > 2000.0, "{per_sec:.0} images/s");
    let big = load_captioned("shapes64:16", 0, Split::Train, 0).unwrap();
    assert_eq!(big.images.shape(), [16, 3, 64, 64]);
}

#[test]
fn bad_specs_are_clear_errors() {
    let e = load_captioned("shapes:0", 32, Split::Train, 0).unwrap_err().to_string();
    assert!(e.contains("shapes:0") && e.contains("integer"), "{e}");
    let e = load_captioned("circles", 32, Split::Train, 0).unwrap_err().to_string();
    assert!(e.contains("circles") && e.contains("shapes64"), "{e}");
    let e = load_captioned("shapes:1000000", 512, Split::Train, 0).unwrap_err().to_string();
    assert!(e.contains("GiB"), "{e}");
}

/// The pixels say what the caption says, read from the caption text alone (what the LDM trains on): the
/// corners have the named background, and in a two-object caption the first-named colour lies on the named
/// side of the second. A caption/pixel mismatch would make a model ignore exactly those words.
#[test]
fn captions_agree_with_the_pixels_for_background_and_relation() {
    let d = load_captioned("shapes:3000", 32, Split::Train, 0).unwrap();
    let (mut n_bg, mut n_rel) = (0, 0);
    for (i, cap) in d.captions.iter().enumerate() {
        let img = d.images.image(i);
        let at = |x: usize, y: usize| [img[y * 32 + x], img[1024 + y * 32 + x], img[2048 + y * 32 + x]];
        let t = parse_prompt(cap).unwrap_or_else(|| panic!("caption {cap:?} does not parse"));
        if let Some(bg) = t.background {
            let want = bg.rgb();
            let hits = [(0, 0), (31, 0), (0, 31), (31, 31)].iter().filter(|&&(x, y)| at(x, y) == want).count();
            assert!(hits >= 3, "{cap:?}: corners {:?} vs {want:?}", at(0, 0));
            n_bg += 1;
        }
        if let (Some(r), [a, b]) = (t.relation, t.objects.as_slice()) {
            // Centroid of the pixels that have exactly an object's colour (its interior).
            let centroid = |c: Colour| {
                let rgb = c.rgb();
                let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
                for y in 0..32 {
                    for x in 0..32 {
                        let p = at(x, y);
                        if (0..3).all(|k| (p[k] - rgb[k]).abs() < 1e-4) {
                            (sx, sy, n) = (sx + x as f32, sy + y as f32, n + 1.0);
                        }
                    }
                }
                assert!(n > 0.0, "{cap:?}: no pixel of {c:?}");
                (sx / n, sy / n)
            };
            if a.colour == b.colour {
                continue;
            }
            let ((ax, ay), (bx, by)) = (centroid(a.colour), centroid(b.colour));
            let ok = match r {
                Relation::LeftOf => ax + 4.0 < bx,
                Relation::RightOf => ax > bx + 4.0,
                Relation::Above => ay + 4.0 < by,
                Relation::Below => ay > by + 4.0,
            };
            assert!(ok, "{cap:?}: centroids {:?} / {:?}", (ax, ay), (bx, by));
            n_rel += 1;
        }
    }
    assert!(n_bg > 400 && n_rel > 1000, "{n_bg} background and {n_rel} relation captions checked");
}
