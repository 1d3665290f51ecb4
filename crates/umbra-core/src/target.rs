//! Readable Gaussian-mixture targets, as typed on a command line or stored in JSON.
//!
//! Text grammar (whitespace anywhere between tokens):
//!
//! ```text
//! mixture := term ('+' term)*
//! term    := [weight '*'] 'N' '(' args ')'
//! args    := number ',' number               1-D: N(mean, std)
//!          | vector ',' number               d-D: N([μ1,..,μd], std)   isotropic, Σ = std²·I
//!          | vector ',' matrix               d-D: N([μ1,..,μd], [[Σ11,..],..,[..,Σdd]])  covariance
//! vector  := '[' number (',' number)* ']'
//! matrix  := '[' vector (',' vector)* ']'
//! ```
//!
//! Examples: `0.5*N(-2,0.6) + 0.5*N(2,0.6)`,
//! `0.5*N([-2,0],[[0.5,0],[0,0.5]]) + 0.5*N([2,1],[[0.5,0.2],[0.2,0.5]])`.
//!
//! Weights must be positive; an omitted weight is 1; **weights are normalized by their sum**, so
//! `N(-2,1) + 3*N(2,1)` means weights 0.25 and 0.75.
//!
//! JSON: `{"components": [{"weight": 0.5, "mean": -2, "std": 0.6}, ...]}` (1-D) or with
//! `"mean": [..]` and `"cov": [[..], ..]` (or `"std": s`) in d-D.

use thiserror::Error;

use crate::gaussian::Gaussian;
use crate::mixture::GaussianMixture;

/// A target that could not be read: the message, and where (column, 1-based) in which string.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{message} at column {column}:\n  {input}\n  {caret}", column = .pos + 1, caret = caret(.input, *.pos))]
pub struct TargetError {
    pub message: String,
    /// 0-based character index into `input`.
    pub pos: usize,
    pub input: String,
}

fn caret(input: &str, pos: usize) -> String {
    // One column per character (tabs kept so the caret lines up in a terminal).
    let mut s: String = input.chars().take(pos).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    s.push('^');
    s
}

/// A target from a JSON file that could not be used.
#[derive(Debug, Error)]
pub enum TargetJsonError {
    #[error("not valid target JSON: {0}; expected {{\"components\": [{{\"weight\": 0.5, \"mean\": -2, \"std\": 0.6}}, ...]}}")]
    Json(#[from] serde_json::Error),
    #[error("component [{index}]: {message}")]
    Component { index: usize, message: String },
}

struct Parser<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
}

/// A parsed `N(...)` term before validation.
struct Term {
    weight: f64,
    weight_pos: usize,
    mean: Vec<f64>,
    /// Either a std (1-D or isotropic) or a full covariance.
    spread: Spread,
    spread_pos: usize,
    start: usize,
}

enum Spread {
    Std(f64),
    Cov(Vec<Vec<f64>>),
}

impl<'a> Parser<'a> {
    fn err<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, TargetError> {
        Err(TargetError { message: message.into(), pos, input: self.input.to_string() })
    }

    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn found(&mut self) -> String {
        match self.peek() {
            Some(c) => format!("found '{c}'"),
            None => "found the end of the input".into(),
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), TargetError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.found();
            self.err(self.pos, format!("expected '{c}' {what}, {found}"))
        }
    }

    fn is_number_start(c: char) -> bool {
        c.is_ascii_digit() || c == '-' || c == '+' || c == '.'
    }

    fn number(&mut self, what: &str) -> Result<f64, TargetError> {
        self.skip_ws();
        let start = self.pos;
        let c = &self.chars;
        let mut i = self.pos;
        if i < c.len() && (c[i] == '-' || c[i] == '+') {
            i += 1;
        }
        let digits_start = i;
        while i < c.len() && (c[i].is_ascii_digit() || c[i] == '.') {
            i += 1;
        }
        if i == digits_start {
            let found = self.found();
            return self.err(start, format!("expected a number ({what}), {found}"));
        }
        if i < c.len() && (c[i] == 'e' || c[i] == 'E') {
            let mut j = i + 1;
            if j < c.len() && (c[j] == '-' || c[j] == '+') {
                j += 1;
            }
            if j < c.len() && c[j].is_ascii_digit() {
                while j < c.len() && c[j].is_ascii_digit() {
                    j += 1;
                }
                i = j;
            }
        }
        let text: String = c[start..i].iter().collect();
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                self.pos = i;
                Ok(v)
            }
            _ => self.err(start, format!("'{text}' is not a finite number ({what})")),
        }
    }

    fn vector(&mut self, what: &str) -> Result<Vec<f64>, TargetError> {
        self.expect('[', &format!("to open {what}"))?;
        let mut v = vec![self.number(what)?];
        loop {
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    v.push(self.number(what)?);
                }
                Some(']') => {
                    self.pos += 1;
                    return Ok(v);
                }
                _ => {
                    let found = self.found();
                    return self.err(self.pos, format!("expected ',' or ']' in {what}, {found}"));
                }
            }
        }
    }

    fn term(&mut self) -> Result<Term, TargetError> {
        let start = {
            self.skip_ws();
            self.pos
        };
        let (weight, weight_pos) = match self.peek() {
            Some(c) if Self::is_number_start(c) => {
                let p = self.pos;
                let w = self.number("the weight")?;
                self.expect('*', "between the weight and N(...)")?;
                (w, p)
            }
            _ => (1.0, start),
        };
        if self.peek() != Some('N') {
            let found = self.found();
            return self.err(self.pos, format!("expected a component 'N(...)' or 'weight*N(...)', {found}"));
        }
        self.pos += 1;
        self.expect('(', "after N")?;
        let mean_pos = {
            self.skip_ws();
            self.pos
        };
        let mean =
            if self.peek() == Some('[') { self.vector("the mean vector")? } else { vec![self.number("the mean")?] };
        let is_vector = self.chars[mean_pos] == '[';
        self.expect(',', "after the mean")?;
        let spread_pos = {
            self.skip_ws();
            self.pos
        };
        let spread = if self.peek() == Some('[') {
            if !is_vector {
                return self.err(
                    spread_pos,
                    "a 1-D component is N(mean, std) with a number std; for d-D write N([mean..], [[cov..]..])",
                );
            }
            self.expect('[', "to open the covariance matrix")?;
            let mut rows = vec![self.vector("a covariance row")?];
            loop {
                match self.peek() {
                    Some(',') => {
                        self.pos += 1;
                        rows.push(self.vector("a covariance row")?);
                    }
                    Some(']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        let found = self.found();
                        return self.err(self.pos, format!("expected ',' or ']' in the covariance matrix, {found}"));
                    }
                }
            }
            Spread::Cov(rows)
        } else {
            Spread::Std(self.number(if is_vector { "the isotropic std" } else { "the std" })?)
        };
        self.expect(')', "to close N(...)")?;
        Ok(Term { weight, weight_pos, mean, spread, spread_pos, start })
    }

    fn mixture(&mut self) -> Result<GaussianMixture, TargetError> {
        if self.peek().is_none() {
            return self.err(self.pos, "empty target; write e.g. \"0.5*N(-2,0.6) + 0.5*N(2,0.6)\"");
        }
        let mut terms = vec![self.term()?];
        loop {
            match self.peek() {
                None => break,
                Some('+') => {
                    self.pos += 1;
                    terms.push(self.term()?);
                }
                Some(_) => {
                    let found = self.found();
                    return self.err(self.pos, format!("expected '+' between components or the end, {found}"));
                }
            }
        }
        let d = terms[0].mean.len();
        let mut weights = Vec::new();
        let mut comps = Vec::new();
        for t in terms {
            if !(t.weight > 0.0) {
                return self.err(t.weight_pos, format!("weight {} must be > 0", t.weight));
            }
            if t.mean.len() != d {
                return self.err(t.start, format!("this component has dimension {}, the first has {d}", t.mean.len()));
            }
            let g = match t.spread {
                Spread::Std(s) => {
                    if !(s > 0.0) {
                        return self.err(t.spread_pos, format!("std {s} must be > 0"));
                    }
                    let mut cov = vec![0.0; d * d];
                    for i in 0..d {
                        cov[i * d + i] = s * s;
                    }
                    Gaussian::new(t.mean, cov)
                }
                Spread::Cov(rows) => {
                    if rows.len() != d || rows.iter().any(|r| r.len() != d) {
                        return self.err(t.spread_pos, format!("the covariance must be {d}x{d} to match the mean"));
                    }
                    Gaussian::new(t.mean, rows.concat())
                }
            };
            match g {
                Ok(g) => comps.push(g),
                Err(e) => return self.err(t.spread_pos, e.to_string()),
            }
            weights.push(t.weight);
        }
        Ok(GaussianMixture::new(weights, comps).expect("weights and dimensions validated above"))
    }
}

/// Parse a text target such as `"0.5*N(-2,0.6) + 0.5*N(2,0.6)"` (see the module docs).
pub fn parse_target(input: &str) -> Result<GaussianMixture, TargetError> {
    Parser { input, chars: input.chars().collect(), pos: 0 }.mixture()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTarget {
    components: Vec<JsonComponent>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonComponent {
    #[serde(default = "one")]
    weight: f64,
    mean: JsonMean,
    std: Option<f64>,
    cov: Option<Vec<Vec<f64>>>,
}

fn one() -> f64 {
    1.0
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonMean {
    Scalar(f64),
    Vector(Vec<f64>),
}

/// Parse a JSON target (see the module docs); weights are normalized like the text form.
pub fn parse_target_json(json: &str) -> Result<GaussianMixture, TargetJsonError> {
    let t: JsonTarget = serde_json::from_str(json)?;
    let bad = |index: usize, message: String| TargetJsonError::Component { index, message };
    if t.components.is_empty() {
        return Err(bad(0, "\"components\" is empty; give at least one".into()));
    }
    let mut weights = Vec::new();
    let mut comps = Vec::new();
    for (i, c) in t.components.into_iter().enumerate() {
        if !(c.weight > 0.0) {
            return Err(bad(i, format!("weight {} must be > 0", c.weight)));
        }
        let mean = match c.mean {
            JsonMean::Scalar(m) => vec![m],
            JsonMean::Vector(v) => v,
        };
        let d = mean.len();
        let cov = match (c.std, c.cov) {
            (Some(s), None) => {
                if !(s > 0.0) {
                    return Err(bad(i, format!("std {s} must be > 0")));
                }
                let mut cov = vec![0.0; d * d];
                for k in 0..d {
                    cov[k * d + k] = s * s;
                }
                cov
            }
            (None, Some(rows)) => {
                if rows.len() != d || rows.iter().any(|r| r.len() != d) {
                    return Err(bad(i, format!("\"cov\" must be {d}x{d} to match \"mean\"")));
                }
                rows.concat()
            }
            _ => return Err(bad(i, "give exactly one of \"std\" and \"cov\"".into())),
        };
        comps.push(Gaussian::new(mean, cov).map_err(|e| bad(i, e.to_string()))?);
        weights.push(c.weight);
    }
    GaussianMixture::new(weights, comps).map_err(|e| bad(0, e.to_string()))
}

/// Write a mixture back in the text syntax (normalized weights; 1-D as N(mean, std)).
pub fn format_target(p: &GaussianMixture) -> String {
    let d = p.dim();
    let f = |x: f64| format!("{}", (x * 1e6).round() / 1e6);
    p.weights()
        .iter()
        .zip(p.components())
        .map(|(w, c)| {
            if d == 1 {
                format!("{}*N({},{})", f(*w), f(c.mean()[0]), f(c.cov()[0].sqrt()))
            } else {
                let mean: Vec<String> = c.mean().iter().map(|&x| f(x)).collect();
                let rows: Vec<String> = (0..d)
                    .map(|i| format!("[{}]", (0..d).map(|j| f(c.cov()[i * d + j])).collect::<Vec<_>>().join(",")))
                    .collect();
                format!("{}*N([{}],[{}])", f(*w), mean.join(","), rows.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_1d_and_normalizes_weights() {
        let p = parse_target("0.5*N(-2,0.6) + 0.5*N(2,0.6)").unwrap();
        assert_eq!(p.dim(), 1);
        assert_eq!(p.weights(), &[0.5, 0.5]);
        assert_eq!(p.components()[0].mean(), &[-2.0]);
        assert!((p.components()[1].cov()[0] - 0.36).abs() < 1e-15);
        let p = parse_target("  N( -2 , 1 )+3 * N(2e0,1.5E-1)  ").unwrap();
        assert_eq!(p.weights(), &[0.25, 0.75]);
        assert!((p.components()[1].cov()[0] - 0.0225).abs() < 1e-15);
    }

    #[test]
    fn parses_2d_full_covariance_and_isotropic() {
        let p = parse_target("0.5*N([-2,0],[[0.5,0],[0,0.5]]) + 0.5*N([2,1],[[0.5,0.2],[0.2,0.5]])").unwrap();
        assert_eq!(p.dim(), 2);
        assert_eq!(p.components()[1].cov(), &[0.5, 0.2, 0.2, 0.5]);
        let q = parse_target("N([0,0], 2) + N([5,5],[[1,0],[0,1]])").unwrap();
        assert_eq!(q.components()[0].cov(), &[4.0, 0.0, 0.0, 4.0]);
        // Round trip through the formatter.
        let r = parse_target(&format_target(&p)).unwrap();
        assert_eq!(r, p);
    }

    fn err(s: &str) -> TargetError {
        parse_target(s).unwrap_err()
    }

    #[test]
    fn syntax_errors_point_at_the_column() {
        let e = err("0.5*N(-2 0.6) + 0.5*N(2,0.6)");
        assert_eq!(e.pos, 9, "{e}");
        assert!(e.message.contains("expected ','"), "{e}");
        let shown = e.to_string();
        assert!(shown.contains("at column 10"), "{shown}");
        assert!(shown.ends_with("\n  0.5*N(-2 0.6) + 0.5*N(2,0.6)\n           ^"), "{shown}");

        let e = err("0.5*N(-2,0.6) + 0.5*M(2,0.6)");
        assert_eq!((e.pos, e.message.contains("expected a component")), (20, true), "{e}");
        let e = err("0.5*N(-2,0.6) 0.5*N(2,0.6)");
        assert_eq!(e.pos, 14, "{e}");
        assert!(e.message.contains("expected '+'"), "{e}");
        let e = err("0.5*N(-2,0.6");
        assert_eq!(e.pos, 12, "{e}");
        assert!(e.message.contains("found the end"), "{e}");
        let e = err("0.5*N(-2,abc)");
        assert_eq!(e.pos, 9, "{e}");
        let e = err("0.5 N(1,1)");
        assert_eq!(e.pos, 4, "{e}");
        assert!(e.message.contains("'*'"), "{e}");
        let e = err("N([0,0],[[1,0],[0,1])");
        assert_eq!(e.pos, 20, "{e}");
        assert_eq!(err("").pos, 0);
    }

    #[test]
    fn semantic_errors_point_at_the_term() {
        let e = err("0.5*N(0,1) + -0.5*N(2,1)");
        assert_eq!(e.pos, 13, "{e}");
        assert!(e.message.contains("weight -0.5 must be > 0"), "{e}");
        let e = err("N(0,1) + N(2,0)");
        assert_eq!(e.pos, 13, "{e}");
        assert!(e.message.contains("std 0 must be > 0"), "{e}");
        let e = err("N([0,0],[[1,2],[2,1]])");
        assert_eq!(e.pos, 8, "{e}");
        assert!(e.message.contains("not positive definite"), "{e}");
        let e = err("N([0,0],[[1,0,0],[0,1,0]])");
        assert!(e.message.contains("2x2"), "{e}");
        let e = err("N([0,0],1) + N(1,1)");
        assert_eq!(e.pos, 13, "{e}");
        assert!(e.message.contains("dimension 1"), "{e}");
        let e = err("N(0,[[1]])");
        assert_eq!(e.pos, 4, "{e}");
    }

    #[test]
    fn json_targets() {
        let p =
            parse_target_json(r#"{"components":[{"weight":1,"mean":-2,"std":0.6},{"weight":3,"mean":2,"std":0.6}]}"#)
                .unwrap();
        assert_eq!(p.weights(), &[0.25, 0.75]);
        let q = parse_target_json(
            r#"{"components":[{"weight":0.5,"mean":[-2,0],"cov":[[0.5,0],[0,0.5]]},{"mean":[2,1],"std":0.5}]}"#,
        )
        .unwrap();
        assert_eq!(q.dim(), 2);
        assert_eq!(q.components()[1].cov(), &[0.25, 0.0, 0.0, 0.25]);
        let e = parse_target_json(r#"{"components":[{"mean":0,"std":1},{"mean":1,"std":1,"cov":[[1]]}]}"#).unwrap_err();
        assert!(e.to_string().starts_with("component [1]: give exactly one"), "{e}");
        let e = parse_target_json(r#"{"components":[{"mean":0,"sd":1}]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `sd`"), "{e}");
    }
}
