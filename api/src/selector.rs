//! Label selectors (`app=web,env in (a,b)`), the `LabelSelector` embedded in specs, field selectors, and label key/value syntax.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a label selector, `LabelSelector` or field selector is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector starts or ends with a comma, or has two commas in a row.
    #[error("invalid label selector {input:?}: empty requirement")]
    EmptyRequirement {
        /// The selector as given.
        input: String,
    },
    /// An operator or `!` has no key before or after it.
    #[error("invalid label selector {input:?}: empty key")]
    EmptyKey {
        /// The selector as given.
        input: String,
    },
    /// A key is followed by something other than an operator, a comma or the end.
    #[error(
        "invalid label selector {input:?}: unknown operator {found} after key {key:?} (expected =, ==, !=, in or notin)"
    )]
    UnknownOperator {
        /// The selector as given.
        input: String,
        /// The key before the operator.
        key: String,
        /// What stood where the operator belongs, quoted.
        found: String,
    },
    /// `=`, `==` or `!=` is followed by something that cannot be a value.
    #[error("invalid label selector {input:?}: expected a value for key {key:?}, found {found}")]
    ExpectedValue {
        /// The selector as given.
        input: String,
        /// The key the value belongs to.
        key: String,
        /// What stood where the value belongs, quoted.
        found: String,
    },
    /// `in` or `notin` is not followed by `(`.
    #[error("invalid label selector {input:?}: expected \"(\" after {operator:?}")]
    ExpectedOpenParen {
        /// The selector as given.
        input: String,
        /// `in` or `notin`.
        operator: &'static str,
    },
    /// A value list is still open at the end of the selector.
    #[error("invalid label selector {input:?}: expected \")\" to close the value list")]
    UnclosedParen {
        /// The selector as given.
        input: String,
    },
    /// `in ()` or `notin ()`.
    #[error("invalid label selector {input:?}: {operator:?} needs at least one value")]
    EmptyValueList {
        /// The selector as given.
        input: String,
        /// `in` or `notin`.
        operator: &'static str,
    },
    /// A token stands where the grammar does not allow it.
    #[error("invalid label selector {input:?}: expected {expected}, found {found}")]
    UnexpectedToken {
        /// The selector as given.
        input: String,
        /// What the grammar allows at that point.
        expected: &'static str,
        /// What stood there instead, quoted.
        found: String,
    },
    /// A key in a selector string is not a valid label key.
    #[error("invalid label selector {input:?}: invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The selector as given.
        input: String,
        /// The offending key.
        key: String,
        /// What is wrong with it (from [`validate_label_key`]).
        reason: String,
    },
    /// A value in a selector string is not a valid label value.
    #[error("invalid label selector {input:?}: invalid value {value:?}: {reason}")]
    InvalidValue {
        /// The selector as given.
        input: String,
        /// The offending value.
        value: String,
        /// What is wrong with it (from [`validate_label_value`]).
        reason: String,
    },
    /// A `matchExpressions` operator is not `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[error(
        "invalid label selector: unknown operator {operator:?} for key {key:?} (expected In, NotIn, Exists or DoesNotExist)"
    )]
    UnknownMatchOperator {
        /// The expression's key.
        key: String,
        /// The operator as given.
        operator: String,
    },
    /// An `In` or `NotIn` expression has no values.
    #[error("invalid label selector: operator {operator} for key {key:?} needs at least one value")]
    MissingMatchValues {
        /// The expression's key.
        key: String,
        /// `In` or `NotIn`.
        operator: &'static str,
    },
    /// An `Exists` or `DoesNotExist` expression has values.
    #[error("invalid label selector: operator {operator} for key {key:?} takes no values")]
    UnexpectedMatchValues {
        /// The expression's key.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: &'static str,
    },
    /// A `matchLabels` or `matchExpressions` key is not a valid label key.
    #[error("invalid label selector: invalid key {key:?}: {reason}")]
    InvalidMatchKey {
        /// The offending key.
        key: String,
        /// What is wrong with it (from [`validate_label_key`]).
        reason: String,
    },
    /// A `matchLabels` or `matchExpressions` value is not a valid label value.
    #[error("invalid label selector: invalid value {value:?} for key {key:?}: {reason}")]
    InvalidMatchValue {
        /// The key the value belongs to.
        key: String,
        /// The offending value.
        value: String,
        /// What is wrong with it (from [`validate_label_value`]).
        reason: String,
    },
    /// The field selector starts or ends with a comma, or has two commas in a row.
    #[error("invalid field selector {input:?}: empty requirement")]
    EmptyFieldRequirement {
        /// The selector as given.
        input: String,
    },
    /// A field selector term has no `=`, `==` or `!=`.
    #[error("invalid field selector {input:?}: expected \"=\", \"==\" or \"!=\" in {term:?}")]
    MissingFieldOperator {
        /// The selector as given.
        input: String,
        /// The term without an operator.
        term: String,
    },
    /// A field path is not dot-separated ASCII letters and digits.
    #[error(
        "invalid field selector {input:?}: invalid field {field:?}: expected dot-separated letters and digits (e.g. \"spec.nodeName\")"
    )]
    InvalidFieldPath {
        /// The selector as given.
        input: String,
        /// The offending field path.
        field: String,
    },
    /// A field selector value contains `=` without a backslash before it.
    #[error("invalid field selector {input:?}: value {value:?} contains an unescaped \"=\"")]
    UnescapedFieldEquals {
        /// The selector as given.
        input: String,
        /// The value as written.
        value: String,
    },
    /// A field selector value has a backslash that is not followed by `\`, `,` or `=`.
    #[error(
        "invalid field selector {input:?}: value {value:?} has an invalid escape (only \\\\, \\, and \\= are allowed)"
    )]
    InvalidFieldEscape {
        /// The selector as given.
        input: String,
        /// The value as written.
        value: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Label key and value syntax

const NAME_PART_SYNTAX: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', 'my.name', or '123-abc')";
const PREFIX_PART_SYNTAX: &str = "prefix part must be a lowercase RFC 1123 subdomain: lowercase alphanumeric characters, '-' or '.', with each dot-separated part starting and ending with an alphanumeric character (e.g. 'example.com')";
const VALUE_SYNTAX: &str = "a label value must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', 'my_value', or '12345')";

/// Checks a label key: an optional DNS subdomain prefix and `/`, then a name of up to 63
/// alphanumerics, `-`, `_` and `.` that starts and ends with an alphanumeric.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((_, name)) if name.contains('/') => {
            return Err(
                "a label key must be a name with an optional DNS subdomain prefix and a single '/' \
                 (e.g. 'MyName' or 'example.com/MyName')"
                    .to_owned(),
            );
        }
        Some((prefix, name)) => {
            validate_prefix(prefix)?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("name part must be non-empty".to_owned());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".to_owned());
    }
    if !is_label_word(name) {
        return Err(NAME_PART_SYNTAX.to_owned());
    }
    Ok(())
}

fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("prefix part must be non-empty".to_owned());
    }
    if prefix.len() > 253 {
        return Err("prefix part must be no more than 253 characters".to_owned());
    }
    let is_subdomain = prefix.split('.').all(|part| {
        starts_and_ends_alphanumeric(part)
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if !is_subdomain {
        return Err(PREFIX_PART_SYNTAX.to_owned());
    }
    Ok(())
}

/// Checks a label value: empty, or up to 63 alphanumerics, `-`, `_` and `.` that starts and ends
/// with an alphanumeric.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err("a label value must be no more than 63 characters".to_owned());
    }
    if !is_label_word(value) {
        return Err(VALUE_SYNTAX.to_owned());
    }
    Ok(())
}

/// The shape shared by label names and values.
fn is_label_word(s: &str) -> bool {
    starts_and_ends_alphanumeric(s)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn starts_and_ends_alphanumeric(s: &str) -> bool {
    let bytes = s.as_bytes();
    matches!((bytes.first(), bytes.last()), (Some(first), Some(last))
        if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// The LabelSelector embedded in object specs

/// The selector embedded in specs (Deployments, Services' pods, ...), as in Kubernetes: every
/// `matchLabels` entry and every `matchExpressions` requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key the requirement is about.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`; anything else makes the selector invalid.
    pub operator: String,
    /// At least one for `In` and `NotIn`, none for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether the selector has no requirements and so matches every set of labels.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector. An empty selector matches everything; an invalid
    /// one (see [`LabelSelector::to_selector`]) matches nothing, so a bad spec never adopts
    /// objects it was not meant to.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.to_selector()
            .is_ok_and(|selector| selector.matches(labels))
    }

    /// The equivalent query selector, after checking operators, value counts, and label key and
    /// value syntax. `matchLabels` come first (in key order), then `matchExpressions` as given.
    pub fn to_selector(&self) -> Result<Selector, SelectorError> {
        let mut requirements =
            Vec::with_capacity(self.match_labels.len() + self.match_expressions.len());
        for (key, value) in &self.match_labels {
            check_match_key(key)?;
            check_match_value(key, value)?;
            requirements.push(Requirement {
                key: key.clone(),
                operator: Operator::Equals,
                values: vec![value.clone()],
            });
        }
        for expression in &self.match_expressions {
            let key = &expression.key;
            check_match_key(key)?;
            let (operator, name) = match expression.operator.as_str() {
                "In" => (Operator::In, "In"),
                "NotIn" => (Operator::NotIn, "NotIn"),
                "Exists" => (Operator::Exists, "Exists"),
                "DoesNotExist" => (Operator::DoesNotExist, "DoesNotExist"),
                other => {
                    return Err(SelectorError::UnknownMatchOperator {
                        key: key.clone(),
                        operator: other.to_owned(),
                    });
                }
            };
            let takes_values = matches!(operator, Operator::In | Operator::NotIn);
            if takes_values && expression.values.is_empty() {
                return Err(SelectorError::MissingMatchValues {
                    key: key.clone(),
                    operator: name,
                });
            }
            if !takes_values && !expression.values.is_empty() {
                return Err(SelectorError::UnexpectedMatchValues {
                    key: key.clone(),
                    operator: name,
                });
            }
            for value in &expression.values {
                check_match_value(key, value)?;
            }
            requirements.push(Requirement {
                key: key.clone(),
                operator,
                values: expression.values.clone(),
            });
        }
        Ok(Selector { requirements })
    }
}

fn check_match_key(key: &str) -> Result<(), SelectorError> {
    validate_label_key(key).map_err(|reason| SelectorError::InvalidMatchKey {
        key: key.to_owned(),
        reason,
    })
}

fn check_match_value(key: &str, value: &str) -> Result<(), SelectorError> {
    validate_label_value(value).map_err(|reason| SelectorError::InvalidMatchValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    })
}

// ---------------------------------------------------------------------------------------------
// Query-string label selectors

/// How a [`Requirement`] compares a label with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value` or `key==value`: the label is present with that value.
    Equals,
    /// `key!=value`: the label is absent or has another value.
    NotEquals,
    /// `key in (a,b)`: the label is present with one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or has none of the values.
    NotIn,
    /// `key`: the label is present.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
}

/// One comma-separated part of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// One for `Equals`/`NotEquals`, at least one for `In`/`NotIn`, none otherwise.
    values: Vec<String>,
}

impl Requirement {
    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How the label is compared.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values the label is compared with, in the order written.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether `labels` satisfy this requirement. Negations hold when the label is missing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => actual.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => {
                actual.is_none_or(|v| !self.values.contains(v))
            }
            Operator::Exists => actual.is_some(),
            Operator::DoesNotExist => actual.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let first = self.values.first().map_or("", String::as_str);
        match self.operator {
            Operator::Equals => write!(f, "{key}={first}"),
            Operator::NotEquals => write!(f, "{key}!={first}"),
            Operator::In => write!(f, "{key} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{key} notin ({})", self.values.join(",")),
            Operator::Exists => f.write_str(key),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A label selector as written in queries (`kubectl get -l`): comma-separated requirements that
/// must all hold. Requirements keep the order they were written in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`
    /// and `!key`, separated by commas, with optional whitespace between tokens. An empty or
    /// blank string selects everything.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        Parser {
            input: s,
            lexer: Lexer::new(s),
        }
        .selector()
    }

    /// The selector that matches every set of labels.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Whether the selector has no requirements.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// A selector requiring each label of `labels` with its value. Keys and values are not
    /// checked, so labels that are not valid only round-trip through [`Selector::parse`] if
    /// they happen to be valid.
    pub fn from_map(labels: &BTreeMap<String, String>) -> Selector {
        let requirements = labels
            .iter()
            .map(|(key, value)| Requirement {
                key: key.clone(),
                operator: Operator::Equals,
                values: vec![value.clone()],
            })
            .collect();
        Selector { requirements }
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

/// The canonical form: `app=web,tier!=db,env in (a,b),!legacy,gpu`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A run of characters other than whitespace and `!=,()`: a key, value or `in`/`notin`.
    Word(&'a str),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Comma,
    Open,
    Close,
    End,
}

/// Quoted for error messages.
impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(word) => write!(f, "{word:?}"),
            Token::Not => f.write_str("\"!\""),
            Token::Equals => f.write_str("\"=\""),
            Token::DoubleEquals => f.write_str("\"==\""),
            Token::NotEquals => f.write_str("\"!=\""),
            Token::Comma => f.write_str("\",\""),
            Token::Open => f.write_str("\"(\""),
            Token::Close => f.write_str("\")\""),
            Token::End => f.write_str("end of selector"),
        }
    }
}

#[derive(Debug)]
struct Lexer<'a> {
    rest: &'a str,
    peeked: Option<Token<'a>>,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Lexer {
            rest: input,
            peeked: None,
        }
    }

    fn next(&mut self) -> Token<'a> {
        match self.peeked.take() {
            Some(token) => token,
            None => self.scan(),
        }
    }

    fn peek(&mut self) -> Token<'a> {
        match self.peeked {
            Some(token) => token,
            None => {
                let token = self.scan();
                self.peeked = Some(token);
                token
            }
        }
    }

    fn scan(&mut self) -> Token<'a> {
        let rest = self.rest.trim_start();
        let (token, len) = if rest.is_empty() {
            (Token::End, 0)
        } else if rest.starts_with("!=") {
            (Token::NotEquals, 2)
        } else if rest.starts_with("==") {
            (Token::DoubleEquals, 2)
        } else if rest.starts_with('!') {
            (Token::Not, 1)
        } else if rest.starts_with('=') {
            (Token::Equals, 1)
        } else if rest.starts_with(',') {
            (Token::Comma, 1)
        } else if rest.starts_with('(') {
            (Token::Open, 1)
        } else if rest.starts_with(')') {
            (Token::Close, 1)
        } else {
            let len = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '!' | '=' | ',' | '(' | ')'))
                .unwrap_or(rest.len());
            (Token::Word(&rest[..len]), len)
        };
        self.rest = &rest[len..];
        token
    }
}

#[derive(Debug)]
struct Parser<'a> {
    input: &'a str,
    lexer: Lexer<'a>,
}

impl Parser<'_> {
    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if self.lexer.peek() == Token::End {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.lexer.next() {
                Token::Comma => {}
                Token::End => return Ok(Selector { requirements }),
                found => return Err(self.unexpected("\",\" or end of selector", found)),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        match self.lexer.next() {
            Token::Not => match self.lexer.next() {
                Token::Word(key) => Ok(Requirement {
                    key: self.key(key)?,
                    operator: Operator::DoesNotExist,
                    values: Vec::new(),
                }),
                _ => Err(SelectorError::EmptyKey {
                    input: self.input.to_owned(),
                }),
            },
            Token::Word(key) => {
                let key = self.key(key)?;
                self.after_key(key)
            }
            Token::Equals | Token::DoubleEquals | Token::NotEquals => {
                Err(SelectorError::EmptyKey {
                    input: self.input.to_owned(),
                })
            }
            Token::Comma | Token::End => Err(SelectorError::EmptyRequirement {
                input: self.input.to_owned(),
            }),
            found @ (Token::Open | Token::Close) => Err(self.unexpected("a key or \"!\"", found)),
        }
    }

    fn after_key(&mut self, key: String) -> Result<Requirement, SelectorError> {
        let (operator, values) = match self.lexer.peek() {
            Token::Comma | Token::End => (Operator::Exists, Vec::new()),
            Token::Equals | Token::DoubleEquals => {
                self.lexer.next();
                (Operator::Equals, vec![self.single_value(&key)?])
            }
            Token::NotEquals => {
                self.lexer.next();
                (Operator::NotEquals, vec![self.single_value(&key)?])
            }
            Token::Word("in") => {
                self.lexer.next();
                (Operator::In, self.value_list("in")?)
            }
            Token::Word("notin") => {
                self.lexer.next();
                (Operator::NotIn, self.value_list("notin")?)
            }
            found => {
                return Err(SelectorError::UnknownOperator {
                    input: self.input.to_owned(),
                    key,
                    found: found.to_string(),
                });
            }
        };
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    /// The value after `=`, `==` or `!=`; nothing before a comma or the end is the empty value.
    fn single_value(&mut self, key: &str) -> Result<String, SelectorError> {
        match self.lexer.peek() {
            Token::Word(value) => {
                self.lexer.next();
                self.value(value)
            }
            Token::Comma | Token::End => Ok(String::new()),
            found => Err(SelectorError::ExpectedValue {
                input: self.input.to_owned(),
                key: key.to_owned(),
                found: found.to_string(),
            }),
        }
    }

    /// `( v1, v2, ... )` after `in` or `notin`. A slot with nothing in it, as in `(,a)`, is the
    /// empty value, but `()` alone is an error rather than a set of one empty value.
    fn value_list(&mut self, operator: &'static str) -> Result<Vec<String>, SelectorError> {
        if self.lexer.next() != Token::Open {
            return Err(SelectorError::ExpectedOpenParen {
                input: self.input.to_owned(),
                operator,
            });
        }
        let mut values = Vec::new();
        let mut separated = false;
        loop {
            let value = match self.lexer.peek() {
                Token::Word(value) => {
                    self.lexer.next();
                    value
                }
                Token::Comma | Token::Close => "",
                Token::End => return Err(self.unclosed()),
                found => return Err(self.unexpected("a value, \",\" or \")\"", found)),
            };
            values.push(self.value(value)?);
            match self.lexer.next() {
                Token::Comma => separated = true,
                Token::Close => break,
                Token::End => return Err(self.unclosed()),
                found => return Err(self.unexpected("\",\" or \")\"", found)),
            }
        }
        if !separated && values.iter().all(String::is_empty) {
            return Err(SelectorError::EmptyValueList {
                input: self.input.to_owned(),
                operator,
            });
        }
        Ok(values)
    }

    fn key(&self, key: &str) -> Result<String, SelectorError> {
        validate_label_key(key).map_err(|reason| SelectorError::InvalidKey {
            input: self.input.to_owned(),
            key: key.to_owned(),
            reason,
        })?;
        Ok(key.to_owned())
    }

    fn value(&self, value: &str) -> Result<String, SelectorError> {
        validate_label_value(value).map_err(|reason| SelectorError::InvalidValue {
            input: self.input.to_owned(),
            value: value.to_owned(),
            reason,
        })?;
        Ok(value.to_owned())
    }

    fn unexpected(&self, expected: &'static str, found: Token<'_>) -> SelectorError {
        SelectorError::UnexpectedToken {
            input: self.input.to_owned(),
            expected,
            found: found.to_string(),
        }
    }

    fn unclosed(&self) -> SelectorError {
        SelectorError::UnclosedParen {
            input: self.input.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors

/// A field selector (`spec.nodeName=node-1,status.phase!=Succeeded`): comma-separated equality
/// tests on object fields that must all hold. In values, `\`, `,` and `=` are written `\\`,
/// `\,` and `\=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FieldRequirement {
    field: String,
    /// `field!=value` rather than `field=value`.
    negated: bool,
    value: String,
}

impl FieldSelector {
    /// Parses `field=value`, `field==value` and `field!=value` terms separated by commas; an
    /// empty or blank string selects everything. Field paths are dot-separated ASCII letters
    /// and digits; whether an object kind supports a field is for the caller to decide (see
    /// [`FieldSelector::fields`]).
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        if s.trim().is_empty() {
            return Ok(FieldSelector::everything());
        }
        let requirements = split_unescaped_commas(s)
            .into_iter()
            .map(|term| FieldRequirement::parse(s, term))
            .collect::<Result<_, _>>()?;
        Ok(FieldSelector { requirements })
    }

    /// The selector that matches every object.
    pub fn everything() -> FieldSelector {
        FieldSelector::default()
    }

    /// Whether the selector has no requirements.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The field paths the selector tests, in the order written (repeats included).
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|r| r.field.as_str())
    }

    /// Whether an object satisfies every requirement, given a way to read its fields. A field
    /// that `get` does not know counts as the empty string.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let actual = get(&r.field).unwrap_or_default();
            (actual == r.value) != r.negated
        })
    }

    /// The value `field` must equal, if the selector requires one, so a server can narrow its
    /// scan before matching the rest.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| !r.negated && r.field == field)
            .map(|r| r.value.as_str())
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(s)
    }
}

/// The canonical form, with `=` for equality and values escaped.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&r.field)?;
            f.write_str(if r.negated { "!=" } else { "=" })?;
            for c in r.value.chars() {
                if matches!(c, '\\' | ',' | '=') {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl FieldRequirement {
    fn parse(input: &str, term: &str) -> Result<FieldRequirement, SelectorError> {
        let term = term.trim();
        if term.is_empty() {
            return Err(SelectorError::EmptyFieldRequirement {
                input: input.to_owned(),
            });
        }
        let missing_operator = || SelectorError::MissingFieldOperator {
            input: input.to_owned(),
            term: term.to_owned(),
        };
        let (field, rest) = term
            .find(['=', '!'])
            .map(|at| term.split_at(at))
            .ok_or_else(missing_operator)?;
        let (negated, raw_value) = if let Some(value) = rest.strip_prefix("!=") {
            (true, value)
        } else if let Some(value) = rest.strip_prefix("==") {
            (false, value)
        } else if let Some(value) = rest.strip_prefix('=') {
            (false, value)
        } else {
            return Err(missing_operator());
        };
        let field = field.trim();
        let is_path = field
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !is_path {
            return Err(SelectorError::InvalidFieldPath {
                input: input.to_owned(),
                field: field.to_owned(),
            });
        }
        Ok(FieldRequirement {
            field: field.to_owned(),
            negated,
            value: unescape_field_value(input, raw_value.trim())?,
        })
    }
}

/// Splits at commas that are not escaped with a backslash.
fn split_unescaped_commas(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn unescape_field_value(input: &str, raw: &str) -> Result<String, SelectorError> {
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => value.push(escaped),
                _ => {
                    return Err(SelectorError::InvalidFieldEscape {
                        input: input.to_owned(),
                        value: raw.to_owned(),
                    });
                }
            },
            '=' => {
                return Err(SelectorError::UnescapedFieldEquals {
                    input: input.to_owned(),
                    value: raw.to_owned(),
                });
            }
            c => value.push(c),
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn selectors_match_by_equality_sets_existence_and_treat_missing_labels_as_kubernetes_does()
    -> Result<(), SelectorError> {
        let web = labels(&[("app", "web"), ("tier", "frontend"), ("env", "prod")]);
        let empty = labels(&[]);
        let cases: &[(&str, &BTreeMap<String, String>, bool)] = &[
            ("", &web, true),
            ("", &empty, true),
            ("app=web", &web, true),
            ("app==web", &web, true),
            ("app=db", &web, false),
            ("app=web", &empty, false),
            ("app!=db", &web, true),
            ("app!=web", &web, false),
            ("app!=web", &empty, true),
            ("env in (prod,staging)", &web, true),
            ("env in (dev,staging)", &web, false),
            ("env in (prod)", &empty, false),
            ("env notin (dev,staging)", &web, true),
            ("env notin (prod)", &web, false),
            ("env notin (prod)", &empty, true),
            ("tier", &web, true),
            ("tier", &empty, false),
            ("!tier", &web, false),
            ("!legacy", &web, true),
            ("!legacy", &empty, true),
            ("app=web,tier=frontend", &web, true),
            ("app=web,tier=backend", &web, false),
            ("app=web,!legacy,env in (prod)", &web, true),
            ("app=", &web, false),
            ("app=", &labels(&[("app", "")]), true),
            ("app!=", &empty, true),
            ("app in (,web)", &labels(&[("app", "")]), true),
        ];
        for &(input, set, expected) in cases {
            let selector = Selector::parse(input)?;
            assert_eq!(selector.matches(set), expected, "{input:?} on {set:?}");
        }
        Ok(())
    }

    #[test]
    fn selectors_allow_whitespace_around_tokens() -> Result<(), SelectorError> {
        let cases: &[(&str, &str)] = &[
            ("  app = web , tier != db ", "app=web,tier!=db"),
            ("app == web", "app=web"),
            ("env in(a , b )", "env in (a,b)"),
            ("env notin ( a,b)", "env notin (a,b)"),
            ("! legacy ,  gpu", "!legacy,gpu"),
            ("   ", ""),
            ("key=", "key="),
            ("key = , other", "key=,other"),
        ];
        for &(input, canonical) in cases {
            assert_eq!(Selector::parse(input)?.to_string(), canonical, "{input:?}");
        }
        Ok(())
    }

    #[test]
    fn canonical_selectors_survive_display_and_parse_unchanged() -> Result<(), SelectorError> {
        let canonical = [
            "",
            "app=web",
            "app=web,tier!=db,env in (a,b),!legacy,gpu",
            "example.com/app notin (x,y,z)",
            "key=,other!=",
            "k in (,a)",
            "in=notin",
            "in in (in,notin)",
            "a.b_c-D=E.f_g-1",
        ];
        for s in canonical {
            let parsed = Selector::parse(s)?;
            assert_eq!(parsed.to_string(), s);
            assert_eq!(Selector::parse(&parsed.to_string())?, parsed, "{s:?}");
        }
        Ok(())
    }

    #[test]
    fn parsed_requirements_expose_key_operator_and_values_in_written_order()
    -> Result<(), SelectorError> {
        let selector = Selector::parse("app=web,env in (b,a),!legacy")?;
        let summary: Vec<_> = selector
            .requirements()
            .iter()
            .map(|r| (r.key(), r.operator(), r.values().to_vec()))
            .collect();
        assert_eq!(
            summary,
            [
                ("app", Operator::Equals, vec!["web".to_owned()]),
                ("env", Operator::In, vec!["b".to_owned(), "a".to_owned()]),
                ("legacy", Operator::DoesNotExist, vec![]),
            ]
        );
        Ok(())
    }

    #[test]
    fn malformed_selectors_are_rejected_with_the_precise_problem() {
        let input = |s: &str| s.to_owned();
        let cases: Vec<(&str, SelectorError)> = vec![
            (
                "app in web",
                SelectorError::ExpectedOpenParen {
                    input: input("app in web"),
                    operator: "in",
                },
            ),
            (
                "app notin",
                SelectorError::ExpectedOpenParen {
                    input: input("app notin"),
                    operator: "notin",
                },
            ),
            (
                "app web",
                SelectorError::UnknownOperator {
                    input: input("app web"),
                    key: "app".to_owned(),
                    found: "\"web\"".to_owned(),
                },
            ),
            (
                "app!",
                SelectorError::UnknownOperator {
                    input: input("app!"),
                    key: "app".to_owned(),
                    found: "\"!\"".to_owned(),
                },
            ),
            (
                "=web",
                SelectorError::EmptyKey {
                    input: input("=web"),
                },
            ),
            (
                "!=web",
                SelectorError::EmptyKey {
                    input: input("!=web"),
                },
            ),
            ("!", SelectorError::EmptyKey { input: input("!") }),
            (
                "!,a",
                SelectorError::EmptyKey {
                    input: input("!,a"),
                },
            ),
            (",", SelectorError::EmptyRequirement { input: input(",") }),
            (
                "a=b,",
                SelectorError::EmptyRequirement {
                    input: input("a=b,"),
                },
            ),
            (
                "a=b,,c",
                SelectorError::EmptyRequirement {
                    input: input("a=b,,c"),
                },
            ),
            (
                "env in (a,b",
                SelectorError::UnclosedParen {
                    input: input("env in (a,b"),
                },
            ),
            (
                "env in (",
                SelectorError::UnclosedParen {
                    input: input("env in ("),
                },
            ),
            (
                "env in ()",
                SelectorError::EmptyValueList {
                    input: input("env in ()"),
                    operator: "in",
                },
            ),
            (
                "env in (a b)",
                SelectorError::UnexpectedToken {
                    input: input("env in (a b)"),
                    expected: "\",\" or \")\"",
                    found: "\"b\"".to_owned(),
                },
            ),
            (
                "env in (a,!b)",
                SelectorError::UnexpectedToken {
                    input: input("env in (a,!b)"),
                    expected: "a value, \",\" or \")\"",
                    found: "\"!\"".to_owned(),
                },
            ),
            (
                "a=b c",
                SelectorError::UnexpectedToken {
                    input: input("a=b c"),
                    expected: "\",\" or end of selector",
                    found: "\"c\"".to_owned(),
                },
            ),
            (
                "a=b=c",
                SelectorError::UnexpectedToken {
                    input: input("a=b=c"),
                    expected: "\",\" or end of selector",
                    found: "\"=\"".to_owned(),
                },
            ),
            (
                "!a=b",
                SelectorError::UnexpectedToken {
                    input: input("!a=b"),
                    expected: "\",\" or end of selector",
                    found: "\"=\"".to_owned(),
                },
            ),
            (
                "(a)",
                SelectorError::UnexpectedToken {
                    input: input("(a)"),
                    expected: "a key or \"!\"",
                    found: "\"(\"".to_owned(),
                },
            ),
            (
                "a=(b)",
                SelectorError::ExpectedValue {
                    input: input("a=(b)"),
                    key: "a".to_owned(),
                    found: "\"(\"".to_owned(),
                },
            ),
        ];
        for (selector, expected) in cases {
            assert_eq!(Selector::parse(selector), Err(expected), "{selector:?}");
        }
    }

    #[test]
    fn selector_keys_and_values_must_be_valid_label_syntax() {
        for bad in [
            "-a=b",
            "a/b/c",
            "Example.com/a",
            "a=-b",
            "a in (b,c-)",
            "a!=b_",
            "!/a",
        ] {
            let error = Selector::parse(bad);
            assert!(
                matches!(
                    error,
                    Err(SelectorError::InvalidKey { .. } | SelectorError::InvalidValue { .. })
                ),
                "{bad:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn selector_error_messages_quote_the_input_and_name_the_problem() {
        let message = |s: &str| Selector::parse(s).map_err(|e| e.to_string()).err();
        assert_eq!(
            message("app in web").as_deref(),
            Some("invalid label selector \"app in web\": expected \"(\" after \"in\"")
        );
        assert_eq!(
            message("=web").as_deref(),
            Some("invalid label selector \"=web\": empty key")
        );
        assert_eq!(
            message("app web").as_deref(),
            Some(
                "invalid label selector \"app web\": unknown operator \"web\" after key \"app\" \
                 (expected =, ==, !=, in or notin)"
            )
        );
        assert!(message("Example.com/a=b").is_some_and(|m| m.starts_with(
            "invalid label selector \"Example.com/a=b\": invalid key \"Example.com/a\": prefix part"
        )));
    }

    #[test]
    fn from_map_requires_every_label_and_renders_in_key_order() {
        let selector = Selector::from_map(&labels(&[("tier", "db"), ("app", "web")]));
        assert_eq!(selector.to_string(), "app=web,tier=db");
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "db"), ("x", "y")])));
        assert!(!selector.matches(&labels(&[("app", "web")])));
        assert!(Selector::from_map(&BTreeMap::new()).is_everything());
        assert!(Selector::everything().matches(&labels(&[])));
        assert_eq!(Selector::everything().to_string(), "");
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn label_selector_converts_to_an_equivalent_query_selector() -> Result<(), SelectorError> {
        let label_sets = [
            labels(&[]),
            labels(&[("app", "web")]),
            labels(&[
                ("app", "web"),
                ("tier", "frontend"),
                ("env", "prod"),
                ("gpu", ""),
            ]),
            labels(&[
                ("app", "web"),
                ("tier", "frontend"),
                ("env", "prod"),
                ("gpu", "1"),
                ("track", "canary"),
            ]),
            labels(&[
                ("app", "web"),
                ("tier", "frontend"),
                ("env", "staging"),
                ("gpu", "1"),
                ("legacy", "true"),
            ]),
        ];
        let cases = [
            (LabelSelector::default(), "", [true; 5]),
            (
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    match_expressions: vec![],
                },
                "app=web",
                [false, true, true, true, true],
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("tier", "frontend"), ("app", "web")]),
                    match_expressions: vec![
                        expression("env", "In", &["prod", "staging"]),
                        expression("track", "NotIn", &["canary"]),
                        expression("gpu", "Exists", &[]),
                        expression("legacy", "DoesNotExist", &[]),
                    ],
                },
                "app=web,tier=frontend,env in (prod,staging),track notin (canary),gpu,!legacy",
                [false, false, true, false, false],
            ),
        ];
        for (label_selector, rendered, expected) in cases {
            let selector = label_selector.to_selector()?;
            assert_eq!(selector.to_string(), rendered);
            assert_eq!(Selector::parse(rendered)?, selector);
            assert_eq!(label_selector.is_empty(), selector.is_everything());
            for (set, expected) in label_sets.iter().zip(expected) {
                assert_eq!(
                    label_selector.matches(set),
                    expected,
                    "{rendered:?} on {set:?}"
                );
                assert_eq!(selector.matches(set), expected, "{rendered:?} on {set:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn empty_label_selector_matches_everything() {
        let selector = LabelSelector::default();
        assert!(selector.is_empty());
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("any", "thing")])));
    }

    #[test]
    fn invalid_label_selectors_fail_to_convert_and_match_nothing() {
        let selector = |expressions: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: expressions,
        };
        let cases = [
            (
                selector(vec![expression("app", "Equals", &["web"])]),
                SelectorError::UnknownMatchOperator {
                    key: "app".to_owned(),
                    operator: "Equals".to_owned(),
                },
            ),
            (
                selector(vec![expression("app", "in", &["web"])]),
                SelectorError::UnknownMatchOperator {
                    key: "app".to_owned(),
                    operator: "in".to_owned(),
                },
            ),
            (
                selector(vec![expression("app", "In", &[])]),
                SelectorError::MissingMatchValues {
                    key: "app".to_owned(),
                    operator: "In",
                },
            ),
            (
                selector(vec![expression("app", "NotIn", &[])]),
                SelectorError::MissingMatchValues {
                    key: "app".to_owned(),
                    operator: "NotIn",
                },
            ),
            (
                selector(vec![expression("app", "Exists", &["web"])]),
                SelectorError::UnexpectedMatchValues {
                    key: "app".to_owned(),
                    operator: "Exists",
                },
            ),
            (
                selector(vec![expression("app", "DoesNotExist", &["web"])]),
                SelectorError::UnexpectedMatchValues {
                    key: "app".to_owned(),
                    operator: "DoesNotExist",
                },
            ),
            (
                selector(vec![expression("-app", "Exists", &[])]),
                SelectorError::InvalidMatchKey {
                    key: "-app".to_owned(),
                    reason: NAME_PART_SYNTAX.to_owned(),
                },
            ),
            (
                selector(vec![expression("app", "In", &["ok", "not ok"])]),
                SelectorError::InvalidMatchValue {
                    key: "app".to_owned(),
                    value: "not ok".to_owned(),
                    reason: VALUE_SYNTAX.to_owned(),
                },
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("app", "web!")]),
                    match_expressions: vec![],
                },
                SelectorError::InvalidMatchValue {
                    key: "app".to_owned(),
                    value: "web!".to_owned(),
                    reason: VALUE_SYNTAX.to_owned(),
                },
            ),
        ];
        let anything = [
            labels(&[]),
            labels(&[("app", "web")]),
            labels(&[("app", "db")]),
        ];
        for (label_selector, expected) in cases {
            assert_eq!(label_selector.to_selector(), Err(expected));
            for set in &anything {
                assert!(
                    !label_selector.matches(set),
                    "{label_selector:?} on {set:?}"
                );
            }
        }
    }

    #[test]
    fn label_selector_serde_uses_camel_case_omits_empty_parts_and_denies_unknown_fields()
    -> Result<(), serde_json::Error> {
        let json = r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"env","operator":"In","values":["a","b"]},{"key":"gpu","operator":"Exists"}]}"#;
        let selector: LabelSelector = serde_json::from_str(json)?;
        assert_eq!(selector.match_labels, labels(&[("app", "web")]));
        assert_eq!(
            selector.match_expressions,
            [
                expression("env", "In", &["a", "b"]),
                expression("gpu", "Exists", &[])
            ]
        );
        assert_eq!(serde_json::to_string(&selector)?, json);

        let empty: LabelSelector = serde_json::from_str("{}")?;
        assert!(empty.is_empty());
        assert_eq!(serde_json::to_string(&empty)?, "{}");

        assert!(serde_json::from_str::<LabelSelector>(r#"{"matchLabel":{}}"#).is_err());
        assert!(
            serde_json::from_str::<LabelSelector>(
                r#"{"matchExpressions":[{"key":"a","operator":"Exists","value":[]}]}"#
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn label_keys_accept_an_optional_dns_prefix_and_a_qualified_name() {
        let long_prefix = format!("{}.com", "a".repeat(249));
        let valid = [
            "app".to_owned(),
            "example.com/app".to_owned(),
            "a_b.c-d".to_owned(),
            "MyName".to_owned(),
            "123-abc".to_owned(),
            "a".to_owned(),
            "k8s.io/My_Name.v1".to_owned(),
            "a-b.c1/x".to_owned(),
            "a".repeat(63),
            format!("{long_prefix}/a"),
        ];
        for key in &valid {
            assert_eq!(validate_label_key(key), Ok(()), "{key:?}");
        }
    }

    #[test]
    fn label_keys_with_bad_prefixes_names_or_lengths_are_rejected_with_reasons() {
        let cases: Vec<(String, &str)> = vec![
            ("-a".to_owned(), NAME_PART_SYNTAX),
            ("a-".to_owned(), NAME_PART_SYNTAX),
            ("a b".to_owned(), NAME_PART_SYNTAX),
            ("_a".to_owned(), NAME_PART_SYNTAX),
            ("a.".to_owned(), NAME_PART_SYNTAX),
            ("é".to_owned(), NAME_PART_SYNTAX),
            ("".to_owned(), "name part must be non-empty"),
            ("a/".to_owned(), "name part must be non-empty"),
            ("/a".to_owned(), "prefix part must be non-empty"),
            ("Example.com/a".to_owned(), PREFIX_PART_SYNTAX),
            ("a..b/c".to_owned(), PREFIX_PART_SYNTAX),
            ("-a.com/c".to_owned(), PREFIX_PART_SYNTAX),
            ("a_b.com/c".to_owned(), PREFIX_PART_SYNTAX),
            (
                "a".repeat(64),
                "name part must be no more than 63 characters",
            ),
            (
                format!("{}/a", "a".repeat(254)),
                "prefix part must be no more than 253 characters",
            ),
        ];
        for (key, reason) in &cases {
            assert_eq!(
                validate_label_key(key),
                Err((*reason).to_owned()),
                "{key:?}"
            );
        }
        let nested = validate_label_key("a/b/c");
        assert!(
            nested.as_ref().is_err_and(|m| m.contains("single '/'")),
            "{nested:?}"
        );
    }

    #[test]
    fn label_values_may_be_empty_or_short_alphanumeric_words() {
        for value in ["", "a", "web", "MyValue", "my_value", "12345", "v1.2-rc_3"] {
            assert_eq!(validate_label_value(value), Ok(()), "{value:?}");
        }
        assert_eq!(validate_label_value(&"a".repeat(63)), Ok(()));
        for value in ["-a", "a-", ".a", "a b", "a/b", "a=b", "é"] {
            assert_eq!(
                validate_label_value(value),
                Err(VALUE_SYNTAX.to_owned()),
                "{value:?}"
            );
        }
        assert_eq!(
            validate_label_value(&"a".repeat(64)),
            Err("a label value must be no more than 63 characters".to_owned())
        );
    }

    #[test]
    fn field_selectors_compare_fields_and_treat_missing_fields_as_empty()
    -> Result<(), SelectorError> {
        let pod = |field: &str| match field {
            "metadata.name" => Some("web-1".to_owned()),
            "spec.nodeName" => Some("node-a".to_owned()),
            "status.phase" => Some("Running".to_owned()),
            _ => None,
        };
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("spec.nodeName=node-a", true),
            ("spec.nodeName==node-a", true),
            ("spec.nodeName=node-b", false),
            ("spec.nodeName!=node-b", true),
            ("spec.nodeName!=node-a", false),
            ("status.phase=Running,metadata.name=web-1", true),
            ("status.phase=Running,metadata.name=web-2", false),
            ("spec.unknown=", true),
            ("spec.unknown!=", false),
            ("spec.unknown=x", false),
            ("spec.unknown!=x", true),
            (" spec.nodeName = node-a , status.phase != Failed ", true),
        ];
        for &(input, expected) in cases {
            assert_eq!(
                FieldSelector::parse(input)?.matches(pod),
                expected,
                "{input:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn field_selector_reports_fields_and_exact_values_for_narrowing() -> Result<(), SelectorError> {
        let selector =
            FieldSelector::parse("spec.nodeName=node-a,status.phase!=Failed,metadata.name==web")?;
        assert_eq!(
            selector.fields().collect::<Vec<_>>(),
            ["spec.nodeName", "status.phase", "metadata.name"]
        );
        assert_eq!(selector.exact("spec.nodeName"), Some("node-a"));
        assert_eq!(selector.exact("metadata.name"), Some("web"));
        assert_eq!(selector.exact("status.phase"), None);
        assert_eq!(selector.exact("metadata.namespace"), None);

        let everything = FieldSelector::parse("  ")?;
        assert!(everything.is_everything());
        assert_eq!(everything, FieldSelector::everything());
        assert_eq!(everything.fields().count(), 0);
        Ok(())
    }

    #[test]
    fn field_selector_values_escape_backslashes_commas_and_equals() -> Result<(), SelectorError> {
        let selector = FieldSelector::parse(r"metadata.name=a\,b\=c\\d,status.phase!=x")?;
        assert_eq!(selector.exact("metadata.name"), Some(r"a,b=c\d"));
        assert_eq!(
            selector.to_string(),
            r"metadata.name=a\,b\=c\\d,status.phase!=x"
        );

        let canonical = [
            "",
            "spec.nodeName=node-a",
            "spec.nodeName=,status.phase!=Running",
            r"metadata.name=\=\,\\",
            "a.b.c1=x!y",
        ];
        for s in canonical {
            let parsed = FieldSelector::parse(s)?;
            assert_eq!(parsed.to_string(), s);
            assert_eq!(FieldSelector::parse(&parsed.to_string())?, parsed);
        }
        assert_eq!(
            FieldSelector::parse("spec.nodeName==node-a")?.to_string(),
            "spec.nodeName=node-a"
        );
        Ok(())
    }

    #[test]
    fn malformed_field_selectors_are_rejected_with_the_precise_problem() {
        let cases: Vec<(&str, SelectorError)> = vec![
            (
                "spec.nodeName",
                SelectorError::MissingFieldOperator {
                    input: "spec.nodeName".to_owned(),
                    term: "spec.nodeName".to_owned(),
                },
            ),
            (
                "a=b,status.phase in (x)",
                SelectorError::MissingFieldOperator {
                    input: "a=b,status.phase in (x)".to_owned(),
                    term: "status.phase in (x)".to_owned(),
                },
            ),
            (
                "a!b",
                SelectorError::MissingFieldOperator {
                    input: "a!b".to_owned(),
                    term: "a!b".to_owned(),
                },
            ),
            (
                "a=b,",
                SelectorError::EmptyFieldRequirement {
                    input: "a=b,".to_owned(),
                },
            ),
            (
                ",a=b",
                SelectorError::EmptyFieldRequirement {
                    input: ",a=b".to_owned(),
                },
            ),
            (
                "=b",
                SelectorError::InvalidFieldPath {
                    input: "=b".to_owned(),
                    field: String::new(),
                },
            ),
            (
                "spec..nodeName=a",
                SelectorError::InvalidFieldPath {
                    input: "spec..nodeName=a".to_owned(),
                    field: "spec..nodeName".to_owned(),
                },
            ),
            (
                "spec.node_name=a",
                SelectorError::InvalidFieldPath {
                    input: "spec.node_name=a".to_owned(),
                    field: "spec.node_name".to_owned(),
                },
            ),
            (
                ".spec=a",
                SelectorError::InvalidFieldPath {
                    input: ".spec=a".to_owned(),
                    field: ".spec".to_owned(),
                },
            ),
            (
                "a=b=c",
                SelectorError::UnescapedFieldEquals {
                    input: "a=b=c".to_owned(),
                    value: "b=c".to_owned(),
                },
            ),
            (
                r"a=b\x",
                SelectorError::InvalidFieldEscape {
                    input: r"a=b\x".to_owned(),
                    value: r"b\x".to_owned(),
                },
            ),
            (
                r"a=b\",
                SelectorError::InvalidFieldEscape {
                    input: r"a=b\".to_owned(),
                    value: r"b\".to_owned(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(FieldSelector::parse(input), Err(expected), "{input:?}");
        }
        let message = FieldSelector::parse("spec.nodeName").map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err(
                "invalid field selector \"spec.nodeName\": expected \"=\", \"==\" or \"!=\" in \"spec.nodeName\""
                    .to_owned()
            )
        );
    }
}
