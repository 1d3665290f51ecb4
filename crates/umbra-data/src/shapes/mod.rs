//! `shapes`: a seeded generator of captioned scenes of one or two coloured shapes, with every image's
//! ground truth and a held-out split of attribute combinations (a compositional test set).
//!
//! A [`Scene`] holds one object (shape, colour, size, place) or two objects in a relation ("a green
//! triangle above a yellow circle"), on a plain dark or light background. [`render`] draws it with
//! antialiased edges (exact signed distances, one evaluation per pixel) at any resolution;
//! [`caption`] writes it in one of several templates; [`parse_prompt`] reads a prompt back into the
//! attributes it names ([`Target`]), so a recognizer can score a generated image against its prompt.
//!
//! The vocabulary is small on purpose (5 shapes, 8 well-separated colours, 2 sizes, 5 places, 4
//! relations) so a small model learns it at 32×32 in minutes on a CPU. **Held out**: the colour–shape
//! pairs in [`HELD_OUT_PAIRS`] and the two-object arrangements in [`HELD_OUT_ARRANGEMENTS`] never occur
//! in the train split; the test split is half held-out scenes, half fresh scenes of seen combinations.

use crate::rng::{derive_seed, SplitMix64};

mod caption;
mod render;
pub use caption::*;
pub use render::*;

/// The five shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
    Cross,
    Star,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 5] =
        [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle, ShapeKind::Cross, ShapeKind::Star];

    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Cross => "cross",
            ShapeKind::Star => "star",
        }
    }

    /// Index in [`ShapeKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The shape named by one word (singular or plural, e.g. `circle`, `squares`, `plus`).
    pub fn parse(word: &str) -> Option<ShapeKind> {
        // Plurals: "crosses", "boxes" drop "es"; "circles" drops "s"; "cross" stays.
        let w = if word.ends_with("sses") || word.ends_with("xes") {
            &word[..word.len() - 2]
        } else if word.ends_with('s') && !word.ends_with("ss") {
            &word[..word.len() - 1]
        } else {
            word
        };
        match w {
            "circle" | "disc" | "disk" | "dot" => Some(ShapeKind::Circle),
            "square" | "box" => Some(ShapeKind::Square),
            "triangle" => Some(ShapeKind::Triangle),
            "cross" | "plus" => Some(ShapeKind::Cross),
            "star" => Some(ShapeKind::Star),
            _ => None,
        }
    }
}

/// The eight named colours (well separated in RGB, all visible on both backgrounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Cyan,
    Blue,
    Purple,
    Pink,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Cyan,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Cyan => "cyan",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
        }
    }

    /// Index in [`Colour::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// RGB in [0, 1].
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Colour::Red => [0.90, 0.10, 0.10],
            Colour::Orange => [1.00, 0.55, 0.00],
            Colour::Yellow => [0.95, 0.90, 0.10],
            Colour::Green => [0.10, 0.70, 0.15],
            Colour::Cyan => [0.00, 0.80, 0.85],
            Colour::Blue => [0.10, 0.25, 0.95],
            Colour::Purple => [0.55, 0.15, 0.80],
            Colour::Pink => [1.00, 0.50, 0.75],
        }
    }

    pub fn parse(word: &str) -> Option<Colour> {
        match word {
            "violet" | "magenta" => Some(Colour::Purple),
            "turquoise" => Some(Colour::Cyan),
            _ => Colour::ALL.into_iter().find(|c| c.name() == word),
        }
    }
}

/// Object size: the radius of the circle the shape is inscribed in, as a fraction of the image side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SizeKind {
    Small,
    Large,
}

impl SizeKind {
    pub const ALL: [SizeKind; 2] = [SizeKind::Small, SizeKind::Large];

    pub fn name(self) -> &'static str {
        match self {
            SizeKind::Small => "small",
            SizeKind::Large => "large",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Radius of the enclosing circle as a fraction of the image side (0.15: 9.6 px across at 32×32).
    pub fn radius(self) -> f32 {
        match self {
            SizeKind::Small => 0.15,
            SizeKind::Large => 0.23,
        }
    }

    pub fn parse(word: &str) -> Option<SizeKind> {
        match word {
            "small" | "little" | "tiny" => Some(SizeKind::Small),
            "large" | "big" | "huge" => Some(SizeKind::Large),
            _ => None,
        }
    }
}

/// Where a single object sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Center,
    Left,
    Right,
    Top,
    Bottom,
}

impl Place {
    pub const ALL: [Place; 5] = [Place::Center, Place::Left, Place::Right, Place::Top, Place::Bottom];

    pub fn name(self) -> &'static str {
        match self {
            Place::Center => "center",
            Place::Left => "left",
            Place::Right => "right",
            Place::Top => "top",
            Place::Bottom => "bottom",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The caption phrase: "on the left", "at the top", "in the middle".
    pub fn phrase(self) -> &'static str {
        match self {
            Place::Center => "in the middle",
            Place::Left => "on the left",
            Place::Right => "on the right",
            Place::Top => "at the top",
            Place::Bottom => "at the bottom",
        }
    }

    /// The anchor (x, y) of the place, in [0, 1] image coordinates (y down).
    pub fn anchor(self) -> (f32, f32) {
        match self {
            Place::Center => (0.5, 0.5),
            Place::Left => (0.28, 0.5),
            Place::Right => (0.72, 0.5),
            Place::Top => (0.5, 0.28),
            Place::Bottom => (0.5, 0.72),
        }
    }

    /// The place of a centre (x, y): the middle if within 0.1 of it, else the dominant direction.
    pub fn of(position: (f32, f32)) -> Place {
        let (dx, dy) = (position.0 - 0.5, position.1 - 0.5);
        if dx.abs() < 0.1 && dy.abs() < 0.1 {
            Place::Center
        } else if dx.abs() >= dy.abs() {
            if dx < 0.0 {
                Place::Left
            } else {
                Place::Right
            }
        } else if dy < 0.0 {
            Place::Top
        } else {
            Place::Bottom
        }
    }
}

/// How `objects[0]` stands to `objects[1]` in a two-object scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [Relation::LeftOf, Relation::RightOf, Relation::Above, Relation::Below];

    pub fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The caption phrase: "to the left of", "above", ...
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The same arrangement said from the other object: left of ↔ right of, above ↔ below.
    pub fn inverse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    /// The axis the two objects lie on.
    pub fn axis(self) -> Axis {
        match self {
            Relation::LeftOf | Relation::RightOf => Axis::Horizontal,
            Relation::Above | Relation::Below => Axis::Vertical,
        }
    }

    /// Whether `objects[0]` is the first object along the axis (the left or the top one).
    pub fn first_is_object0(self) -> bool {
        matches!(self, Relation::LeftOf | Relation::Above)
    }
}

/// The axis of a two-object scene: side by side or one above the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    Horizontal,
    Vertical,
}

/// A plain background.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Background {
    Dark,
    Light,
}

impl Background {
    pub const ALL: [Background; 2] = [Background::Dark, Background::Light];

    pub fn name(self) -> &'static str {
        match self {
            Background::Dark => "dark",
            Background::Light => "light",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn rgb(self) -> [f32; 3] {
        match self {
            Background::Dark => [0.10, 0.10, 0.12],
            Background::Light => [0.86, 0.86, 0.84],
        }
    }

    pub fn parse(word: &str) -> Option<Background> {
        match word {
            "dark" | "black" => Some(Background::Dark),
            "light" | "white" | "bright" => Some(Background::Light),
            _ => None,
        }
    }
}

/// One object of a scene.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapeObject {
    pub shape: ShapeKind,
    pub colour: Colour,
    pub size: SizeKind,
    /// Centre (x, y) in [0, 1] image coordinates, y down.
    pub position: (f32, f32),
}

impl ShapeObject {
    /// The named place of the object's centre (see [`Place::of`]).
    pub fn place(&self) -> Place {
        Place::of(self.position)
    }
}

/// A scene: one object, or two with `relation` = how `objects[0]` stands to `objects[1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub objects: Vec<ShapeObject>,
    pub relation: Option<Relation>,
    pub background: Background,
}

/// Colour–shape pairs that never occur in the train split.
pub const HELD_OUT_PAIRS: [(Colour, ShapeKind); 5] = [
    (Colour::Orange, ShapeKind::Circle),
    (Colour::Cyan, ShapeKind::Square),
    (Colour::Purple, ShapeKind::Triangle),
    (Colour::Yellow, ShapeKind::Cross),
    (Colour::Blue, ShapeKind::Star),
];

/// Two-object arrangements (axis, shape of the left/top object, shape of the right/bottom object) that
/// never occur in the train split; the mirrored arrangement (e.g. a square left of a circle) does.
pub const HELD_OUT_ARRANGEMENTS: [(Axis, ShapeKind, ShapeKind); 6] = [
    (Axis::Horizontal, ShapeKind::Circle, ShapeKind::Square),
    (Axis::Horizontal, ShapeKind::Triangle, ShapeKind::Star),
    (Axis::Horizontal, ShapeKind::Cross, ShapeKind::Circle),
    (Axis::Vertical, ShapeKind::Square, ShapeKind::Triangle),
    (Axis::Vertical, ShapeKind::Star, ShapeKind::Cross),
    (Axis::Vertical, ShapeKind::Circle, ShapeKind::Star),
];

/// Whether a colour–shape pair is held out of training.
pub fn pair_is_held_out(colour: Colour, shape: ShapeKind) -> bool {
    HELD_OUT_PAIRS.contains(&(colour, shape))
}

/// Whether an arrangement (first = left/top shape, second = right/bottom shape) is held out of training.
pub fn arrangement_is_held_out(axis: Axis, first: ShapeKind, second: ShapeKind) -> bool {
    HELD_OUT_ARRANGEMENTS.contains(&(axis, first, second))
}

/// Whether `(axis, first, second)` of two shapes in relation `rel` (`a` rel `b`) is held out.
fn relation_is_held_out(rel: Relation, a: ShapeKind, b: ShapeKind) -> bool {
    let (first, second) = if rel.first_is_object0() { (a, b) } else { (b, a) };
    arrangement_is_held_out(rel.axis(), first, second)
}

impl Scene {
    /// Whether the scene contains a held-out colour–shape pair or a held-out two-object arrangement.
    pub fn is_held_out(&self) -> bool {
        self.objects.iter().any(|o| pair_is_held_out(o.colour, o.shape))
            || match (self.relation, self.objects.as_slice()) {
                (Some(r), [a, b]) => relation_is_held_out(r, a.shape, b.shape),
                _ => false,
            }
    }

    /// Every attribute of the scene as a [`Target`] (sizes, places and background all given).
    pub fn target(&self) -> Target {
        let single = self.objects.len() == 1;
        Target {
            objects: self
                .objects
                .iter()
                .map(|o| ObjectTarget {
                    shape: o.shape,
                    colour: o.colour,
                    size: Some(o.size),
                    place: if single { Some(o.place()) } else { None },
                })
                .collect(),
            relation: self.relation,
            background: Some(self.background),
        }
    }

    /// The objects in canonical order: the single object, or (left, right) / (top, bottom) of a pair.
    pub fn canonical_objects(&self) -> Vec<ShapeObject> {
        match (self.relation, self.objects.as_slice()) {
            (Some(r), [a, b]) if !r.first_is_object0() => vec![*b, *a],
            _ => self.objects.clone(),
        }
    }

    /// The axis of a two-object scene (`None` for one object).
    pub fn axis(&self) -> Option<Axis> {
        self.relation.map(Relation::axis)
    }
}

/// What a prompt asks for about one object; `None` where the prompt does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectTarget {
    pub shape: ShapeKind,
    pub colour: Colour,
    pub size: Option<SizeKind>,
    pub place: Option<Place>,
}

/// What a prompt asks for: one or two objects, the relation of `objects[0]` to `objects[1]`, maybe a
/// background. Produced by [`parse_prompt`] or [`Scene::target`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub objects: Vec<ObjectTarget>,
    pub relation: Option<Relation>,
    pub background: Option<Background>,
}

impl Target {
    /// Whether the target names a held-out colour–shape pair or a held-out two-object arrangement.
    pub fn is_held_out(&self) -> bool {
        self.objects.iter().any(|o| pair_is_held_out(o.colour, o.shape))
            || match (self.relation, self.objects.as_slice()) {
                (Some(r), [a, b]) => relation_is_held_out(r, a.shape, b.shape),
                _ => false,
            }
    }
}

// ---------------------------------------------------------------------------------------------------
// Sampling

/// Jitter of a single object's centre around its place's anchor (each axis, uniform ±).
const PLACE_JITTER: f32 = 0.04;
/// Centres of a pair along its axis, and their jitter (uniform ±): large objects never touch.
const PAIR_ANCHORS: (f32, f32) = (0.25, 0.75);
const PAIR_JITTER: f32 = 0.015;
/// Jitter of a pair's centres across the axis (each object independently).
const PAIR_CROSS_JITTER: f32 = 0.08;

fn pick<T: Copy>(rng: &mut SplitMix64, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

fn jitter(rng: &mut SplitMix64, amp: f32) -> f32 {
    (rng.uniform_f32() * 2.0 - 1.0) * amp
}

/// One scene drawn uniformly over the vocabulary (half one object, half two), ignoring held-out rules.
pub fn sample_scene(rng: &mut SplitMix64) -> Scene {
    let background = pick(rng, &Background::ALL);
    if rng.below(2) == 0 {
        let place = pick(rng, &Place::ALL);
        let (ax, ay) = place.anchor();
        let o = ShapeObject {
            shape: pick(rng, &ShapeKind::ALL),
            colour: pick(rng, &Colour::ALL),
            size: pick(rng, &SizeKind::ALL),
            position: (ax + jitter(rng, PLACE_JITTER), ay + jitter(rng, PLACE_JITTER)),
        };
        return Scene { objects: vec![o], relation: None, background };
    }
    let relation = pick(rng, &Relation::ALL);
    let a_shape = pick(rng, &ShapeKind::ALL);
    let a_colour = pick(rng, &Colour::ALL);
    // Two objects never share both colour and shape, so "which one is which" is always defined.
    let (b_shape, b_colour) = loop {
        let (s, c) = (pick(rng, &ShapeKind::ALL), pick(rng, &Colour::ALL));
        if (s, c) != (a_shape, a_colour) {
            break (s, c);
        }
    };
    let (a_size, b_size) = (pick(rng, &SizeKind::ALL), pick(rng, &SizeKind::ALL));
    let along = |rng: &mut SplitMix64, first: bool| {
        (if first { PAIR_ANCHORS.0 } else { PAIR_ANCHORS.1 }) + jitter(rng, PAIR_JITTER)
    };
    let a_first = relation.first_is_object0();
    let (pa, pb) = {
        let (a_al, b_al) = (along(rng, a_first), along(rng, !a_first));
        let (a_x, b_x) = (0.5 + jitter(rng, PAIR_CROSS_JITTER), 0.5 + jitter(rng, PAIR_CROSS_JITTER));
        match relation.axis() {
            Axis::Horizontal => ((a_al, a_x), (b_al, b_x)),
            Axis::Vertical => ((a_x, a_al), (b_x, b_al)),
        }
    };
    let a = ShapeObject { shape: a_shape, colour: a_colour, size: a_size, position: pa };
    let b = ShapeObject { shape: b_shape, colour: b_colour, size: b_size, position: pb };
    Scene { objects: vec![a, b], relation: Some(relation), background }
}

/// A scene that is held out (`held_out = true`) or contains only seen combinations, by rejection.
pub fn sample_scene_where(rng: &mut SplitMix64, held_out: bool) -> Scene {
    loop {
        let s = sample_scene(rng);
        if s.is_held_out() == held_out {
            return s;
        }
    }
}

/// Stream tags that keep train, test and prompt scenes apart for one seed.
const TRAIN_STREAM: u64 = 0x74_7261_696e;
const TEST_STREAM: u64 = 0x7465_7374;
const PROMPT_STREAM: u64 = 0x7072_6f6d_7074;

/// Scene `i` of a split with its caption template: train scenes only use seen combinations; test scene
/// `i` is held out for even `i` and seen for odd `i`. Each index has its own stream (seed, split, i).
pub fn split_scene(seed: u64, train: bool, i: usize) -> (Scene, usize) {
    let tag = if train { TRAIN_STREAM } else { TEST_STREAM };
    let mut rng = SplitMix64::new(derive_seed(&[seed, tag, i as u64]));
    let held_out = !train && i.is_multiple_of(2);
    let s = sample_scene_where(&mut rng, held_out);
    let t = rng.below(NUM_TEMPLATES as u64) as usize;
    (s, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_words_parse_in_singular_and_plural() {
        for s in ShapeKind::ALL {
            assert_eq!(ShapeKind::parse(s.name()), Some(s));
            let plural = if s == ShapeKind::Cross { "crosses".to_string() } else { format!("{}s", s.name()) };
            assert_eq!(ShapeKind::parse(&plural), Some(s), "{plural}");
        }
        assert_eq!(ShapeKind::parse("boxes"), Some(ShapeKind::Square));
        assert_eq!(ShapeKind::parse("dress"), None);
    }

    #[test]
    fn sdfs_are_negative_inside_and_positive_outside() {
        for s in ShapeKind::ALL {
            assert!(shape_sdf(s, (0.0, 0.0)) < -0.2, "{s:?} centre");
            assert!(shape_sdf(s, (1.1, 1.1)) > 0.0, "{s:?} corner");
            assert!(shape_sdf(s, (0.0, 1.05)) > 0.0 && shape_sdf(s, (1.05, 0.0)) > 0.0, "{s:?} edge");
        }
        // Circle: exact distance.
        assert!((shape_sdf(ShapeKind::Circle, (2.0, 0.0)) - 1.12).abs() < 1e-6);
        // Star: the tip is at (0, 1 - 0.06), the notch between two tips is outside at radius 0.9.
        assert!(shape_sdf(ShapeKind::Star, (0.0, 0.9)) < 0.0);
        assert!(shape_sdf(ShapeKind::Star, (0.0, -0.9)) > 0.0);
    }
}
