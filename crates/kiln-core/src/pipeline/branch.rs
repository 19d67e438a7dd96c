//! Branch patterns (`main`, `release/*`, `!wip/**`) and the rule that decides whether a step
//! runs on a branch.

use std::fmt;

/// One entry of a step's `branches`: a glob, possibly negated with a leading `!`.
///
/// `*` matches any run of characters except `/`, `**` any run including `/`, `?` one
/// character except `/`; every other character matches itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BranchPattern {
    negated: bool,
    glob: String,
}

impl BranchPattern {
    /// Parses `main`, `release/*` or `!wip/*`; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (negated, glob) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if glob.is_empty() {
            return Err("is empty: write a branch name or a pattern such as 'release/*'".into());
        }
        if glob.len() > crate::limits::MAX_PIPELINE_PATH_LEN {
            return Err(format!(
                "is longer than {} characters",
                crate::limits::MAX_PIPELINE_PATH_LEN
            ));
        }
        if glob
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '!')
        {
            return Err(
                "may not contain spaces, control characters or a '!' other than the leading one"
                    .into(),
            );
        }
        Ok(BranchPattern {
            negated,
            glob: glob.to_owned(),
        })
    }

    /// Whether the pattern starts with `!` (excludes the branches it matches).
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// The glob without the leading `!`.
    pub fn glob(&self) -> &str {
        &self.glob
    }

    /// Whether the glob matches `branch` (ignoring negation).
    pub fn glob_matches(&self, branch: &str) -> bool {
        glob_match(&self.glob, branch)
    }
}

impl fmt::Display for BranchPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        f.write_str(&self.glob)
    }
}

/// The rule documented on [`super::Step::runs_on_branch`].
pub(super) fn runs_on(patterns: &[BranchPattern], branch: &str) -> bool {
    let mut has_positive = false;
    let mut positive_match = false;
    for pattern in patterns {
        let matched = pattern.glob_matches(branch);
        if pattern.negated {
            if matched {
                return false;
            }
        } else {
            has_positive = true;
            positive_match |= matched;
        }
    }
    positive_match || !has_positive
}

enum Token {
    Literal(char),
    AnyOne,
    AnyInSegment,
    AnyAcrossSegments,
}

/// Glob matching by dynamic programming over (pattern token, text position): linear in the
/// product of the two lengths, so a hostile pattern cannot make it backtrack exponentially.
fn glob_match(glob: &str, text: &str) -> bool {
    let mut tokens = Vec::new();
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                Token::AnyAcrossSegments
            }
            '*' => Token::AnyInSegment,
            '?' => Token::AnyOne,
            other => Token::Literal(other),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // matches[j]: the tokens seen so far match text[..j].
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for token in &tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            Token::Literal(expected) => {
                for j in 0..text.len() {
                    next[j + 1] = matches[j] && text[j] == *expected;
                }
            }
            Token::AnyOne => {
                for j in 0..text.len() {
                    next[j + 1] = matches[j] && text[j] != '/';
                }
            }
            Token::AnyInSegment | Token::AnyAcrossSegments => {
                let crosses = matches!(token, Token::AnyAcrossSegments);
                next[0] = matches[0];
                for j in 0..text.len() {
                    next[j + 1] = matches[j + 1] || (next[j] && (crosses || text[j] != '/'));
                }
            }
        }
        matches = next;
    }
    matches[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(raw: &[&str]) -> Vec<BranchPattern> {
        raw.iter()
            .map(|raw| BranchPattern::parse(raw).unwrap())
            .collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "maint"));
        assert!(glob_match("release/*", "release/1.2"));
        assert!(!glob_match("release/*", "release/1.2/hotfix"));
        assert!(!glob_match("release/*", "release"));
        assert!(glob_match("release/**", "release/1.2/hotfix"));
        assert!(glob_match("**", "any/thing"));
        assert!(glob_match("feature-?", "feature-a"));
        assert!(!glob_match("feature-?", "feature-ab"));
        assert!(!glob_match("a?b", "a/b"));
        assert!(glob_match("*-stable", "2.0-stable"));
        assert!(glob_match("*", ""));
        assert!(!glob_match(&"*a".repeat(100), &"a".repeat(99)));
    }

    #[test]
    fn runs_on_rule() {
        assert!(runs_on(&[], "anything"));
        let release = patterns(&["main", "release/*"]);
        assert!(runs_on(&release, "main"));
        assert!(runs_on(&release, "release/2"));
        assert!(!runs_on(&release, "feature/x"));
        let not_wip = patterns(&["!wip/*"]);
        assert!(runs_on(&not_wip, "main"));
        assert!(!runs_on(&not_wip, "wip/x"));
        let mixed = patterns(&["release/*", "!release/old"]);
        assert!(runs_on(&mixed, "release/new"));
        assert!(!runs_on(&mixed, "release/old"));
        assert!(!runs_on(&mixed, "main"));
    }

    #[test]
    fn pattern_errors() {
        assert!(BranchPattern::parse("!").is_err());
        assert!(BranchPattern::parse("").is_err());
        assert!(BranchPattern::parse("a b").is_err());
        assert!(BranchPattern::parse("a!b").is_err());
        assert_eq!(
            BranchPattern::parse("!wip/*").unwrap().to_string(),
            "!wip/*"
        );
    }
}
