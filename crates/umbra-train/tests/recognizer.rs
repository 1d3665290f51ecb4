//! The `shapes` attribute recognizer: the GenEval-style scoring rules on hand-built readouts (closed
//! cases), and a short training run that must already read ground-truth test images well, save, load and
//! resume exactly.

use candle_core::Device;
use umbra_data::captioned::load_captioned;
use umbra_data::shapes::{parse_prompt, Colour, Relation, Scene, ShapeKind, Target};
use umbra_data::Split;
use umbra_nn::recognizer::RecognizerConfig;
use umbra_train::recognizer_trainer::{
    labels_of, score_one, score_recognized, Recognized, RecognizerTrainConfig, RecognizerTrainer, TrainedRecognizer,
};

fn test_scenes(n: usize) -> Vec<Scene> {
    load_captioned(&format!("shapes:{n}"), 8, Split::Test, 0).unwrap().scenes.unwrap()
}

#[test]
fn a_perfect_readout_scores_100_percent_on_full_scenes_and_on_captions() {
    let d = load_captioned("shapes:400", 8, Split::Test, 0).unwrap();
    let scenes = d.scenes.as_ref().unwrap();
    let rec: Vec<Recognized> = scenes.iter().map(Recognized::of_scene).collect();
    for targets in [
        scenes.iter().map(Scene::target).collect::<Vec<Target>>(),
        d.captions.iter().map(|c| parse_prompt(c).unwrap()).collect(),
    ] {
        let r = score_recognized(&rec, &targets);
        assert_eq!((r.all.prompts, r.seen.prompts, r.held_out.prompts), (400, 200, 200));
        for (name, t) in r.all.tallies() {
            assert_eq!(t.correct, t.total, "{name}: {t:?}");
        }
        assert!(r.all.binding.total > 100 && r.held_out.relation.total > 50, "{:?}", r.all);
        assert_eq!(r.all.whole.accuracy(), 1.0);
    }
}

#[test]
fn swapped_pairs_keep_binding_but_lose_the_relation_and_wrong_colours_lose_binding() {
    let t = parse_prompt("a red circle to the left of a blue square").unwrap();
    let truth = Recognized::of_scene(
        &test_scenes(400)
            .into_iter()
            .find(|s| s.relation == Some(Relation::LeftOf))
            .map(|mut s| {
                s.objects[0].shape = ShapeKind::Circle;
                s.objects[0].colour = Colour::Red;
                s.objects[1].shape = ShapeKind::Square;
                s.objects[1].colour = Colour::Blue;
                s
            })
            .unwrap(),
    );
    let ok = score_one(&truth, &t);
    assert!(ok.whole && ok.binding == Some(true) && ok.relation == Some(true), "{ok:?}");
    // Mirror image: blue square left of red circle.
    let mut swapped = truth.clone();
    swapped.objects.swap(0, 1);
    let s = score_one(&swapped, &t);
    assert_eq!((s.binding, s.axis, s.relation, s.whole), (Some(true), Some(true), Some(false), false), "{s:?}");
    assert_eq!((s.shape, s.colour), ([Some(true); 2], [Some(true); 2]), "attributes match under the best assignment");
    // Right layout, colours swapped between the shapes: a blue circle left of a red square.
    let mut rebound = truth.clone();
    rebound.objects[0].colour = Colour::Blue;
    rebound.objects[1].colour = Colour::Red;
    let s = score_one(&rebound, &t);
    assert_eq!((s.binding, s.relation, s.whole, s.colour), (Some(false), Some(false), false, [Some(false); 2]));
    assert_eq!(s.shape, [Some(true); 2]);
    // Vertical instead of horizontal: binding holds, relation fails.
    let mut vertical = truth.clone();
    vertical.axis = Some(umbra_data::shapes::Axis::Vertical);
    let s = score_one(&vertical, &t);
    assert_eq!((s.binding, s.axis, s.relation), (Some(true), Some(false), Some(false)));
    // One object drawn for a two-object prompt: count and binding fail.
    let mut single = truth.clone();
    single.objects.truncate(1);
    single.axis = None;
    let s = score_one(&single, &t);
    assert!(!s.count && s.binding == Some(false) && s.axis == Some(false) && !s.whole, "{s:?}");
}

#[test]
fn labels_put_pairs_in_canonical_order() {
    let scenes = test_scenes(200);
    let y = labels_of(&scenes);
    for (i, s) in scenes.iter().enumerate() {
        let c = s.canonical_objects();
        assert_eq!(y.slots[0][0][i] as usize, c[0].shape.index());
        assert_eq!(y.has_second[i], s.objects.len() == 2);
        if let Some(r) = s.relation {
            let first = if r.first_is_object0() { &s.objects[0] } else { &s.objects[1] };
            assert_eq!(y.slots[0][1][i] as usize, first.colour.index());
            assert_eq!(y.slots[1][1][i] as usize, c[1].colour.index());
        }
    }
}

fn small_config(steps: u64) -> RecognizerTrainConfig {
    RecognizerTrainConfig {
        net: RecognizerConfig { channels: [16, 32, 32, 32], hidden: 96, ..Default::default() },
        pool: 20_000,
        batch_size: 32,
        lr: 3e-3,
        seed: 1,
        steps,
        ..Default::default()
    }
}

#[test]
fn a_short_run_reads_ground_truth_and_saves_loads_and_resumes_exactly() {
    let dev = Device::Cpu;
    let test = load_captioned("shapes:400", 32, Split::Test, 0).unwrap();
    let out = std::env::temp_dir().join(format!("umbra-recognizer-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let steps = 400;
    let mut t = RecognizerTrainer::new(small_config(steps), &dev).unwrap();
    let first_loss = t.loss(&(0..64).collect::<Vec<_>>(), 0).unwrap().to_scalar::<f32>().unwrap();
    let t0 = std::time::Instant::now();
    let s = t.train(&test, &out, None, None, false).unwrap();
    eprintln!("recognizer: {steps} steps in {:.1} s\n{}", t0.elapsed().as_secs_f64(), s.report.table());
    let last_loss = t.loss(&(0..64).collect::<Vec<_>>(), 0).unwrap().to_scalar::<f32>().unwrap();
    assert!(last_loss < first_loss / 4.0, "loss {first_loss} -> {last_loss}");
    let r = &s.report;
    assert_eq!(r.all.prompts, 400);
    assert!(r.all.count.accuracy() > 0.95, "{}", r.table());
    assert!(r.all.colour.accuracy() > 0.9 && r.all.shape.accuracy() > 0.8, "{}", r.table());
    assert!(r.held_out.whole.accuracy() > 0.3, "{}", r.table());
    // One-object prompts are their own group: no binding or relation scored there, and the rest of the prompts
    // name two objects (each of them scores one binding).
    assert!(r.single.prompts > 0 && r.single.prompts < r.all.prompts, "{}", r.table());
    assert_eq!(r.single.binding.total, 0);
    assert_eq!(r.single.prompts + r.all.binding.total, r.all.prompts);
    // The saved checkpoint reads the images exactly as the trained model does.
    let loaded = TrainedRecognizer::load(&s.checkpoint, &dev).unwrap();
    let x = test.images.batch(&(0..50).collect::<Vec<_>>(), &dev).unwrap();
    assert_eq!(loaded.recognize(&x).unwrap(), t.model.recognize(&x).unwrap());
    // 64×64 inputs are area-averaged to 32×32.
    let big = load_captioned("shapes64:8", 0, Split::Test, 0).unwrap();
    assert_eq!(loaded.recognize(&big.images.batch(&[0, 1], &dev).unwrap()).unwrap().len(), 2);
    std::fs::remove_dir_all(&out).unwrap();

    // Resume: 6 steps then 6 more equals 12 straight (weights bitwise).
    let (a_dir, b_dir) = (out.with_extension("a"), out.with_extension("b"));
    let tiny = |steps| RecognizerTrainConfig { pool: 500, ..small_config(steps) };
    let small_test = test.take(4);
    let mut a = RecognizerTrainer::new(tiny(12), &dev).unwrap();
    a.train(&small_test, &a_dir, None, None, false).unwrap();
    let mut b = RecognizerTrainer::new(tiny(12), &dev).unwrap();
    b.train(&small_test, &b_dir, Some(6), None, false).unwrap();
    let mut b = RecognizerTrainer::resume(&b_dir, &dev, None).unwrap();
    assert_eq!(b.step, 6);
    b.train(&small_test, &b_dir, None, None, false).unwrap();
    let w = |t: &RecognizerTrainer| {
        let mut v: Vec<(String, Vec<f32>)> = t
            .model
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    assert!(w(&a) == w(&b), "resumed weights differ from an uninterrupted run");
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}
