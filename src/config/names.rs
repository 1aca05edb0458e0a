//! The rule for names that become NATS subject tokens: agent ids, agent
//! types and daemon ids, shared by the config loader, the envelope decoder
//! and the CLI.
//!
//! Names are interpolated into subjects (`mister-smith.{type}.{id}.…`), so
//! anything that could change the shape of a subject (`.`, `*`, `>`,
//! whitespace, control characters) must be refused before it gets anywhere
//! near a connection.

/// The longest id, type or daemon id accepted.
pub const MAX_TOKEN_LEN: usize = 64;

/// Tokens that have a meaning of their own in a subject and so cannot name
/// an agent, a type or a daemon.
pub const RESERVED_TOKENS: [&str; 4] = ["any", "all", "system", "broadcast"];

/// Why a name cannot be used as a subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    Empty,
    TooLong(usize),
    BadChar(char),
    Reserved,
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenProblem::Empty => write!(f, "must not be empty"),
            TokenProblem::TooLong(n) => {
                write!(f, "is {n} characters long (at most {MAX_TOKEN_LEN})")
            }
            TokenProblem::BadChar(c) => write!(
                f,
                "contains {c:?} (only A-Z, a-z, 0-9, '_' and '-' are allowed)"
            ),
            TokenProblem::Reserved => write!(
                f,
                "is reserved (any, all, system and broadcast have a meaning in subjects)"
            ),
        }
    }
}

/// Checks that `name` matches `[A-Za-z0-9_-]{1,64}` and is not reserved.
pub fn check_token(name: &str) -> Result<(), TokenProblem> {
    if name.is_empty() {
        return Err(TokenProblem::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TokenProblem::BadChar(c));
    }
    // Every remaining character is ASCII, so bytes are characters.
    if name.len() > MAX_TOKEN_LEN {
        return Err(TokenProblem::TooLong(name.len()));
    }
    if RESERVED_TOKENS.contains(&name) {
        return Err(TokenProblem::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["coder-1", "a", "A_b-9", &"x".repeat(64)] {
            assert_eq!(check_token(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_subject_metacharacters_and_reserved_words() {
        assert_eq!(check_token(""), Err(TokenProblem::Empty));
        assert_eq!(check_token("a.b"), Err(TokenProblem::BadChar('.')));
        assert_eq!(check_token("x.>"), Err(TokenProblem::BadChar('.')));
        assert_eq!(check_token("*"), Err(TokenProblem::BadChar('*')));
        assert_eq!(check_token("a b"), Err(TokenProblem::BadChar(' ')));
        assert_eq!(check_token("a\u{7}"), Err(TokenProblem::BadChar('\u{7}')));
        assert_eq!(check_token("é"), Err(TokenProblem::BadChar('é')));
        assert_eq!(check_token(&"x".repeat(65)), Err(TokenProblem::TooLong(65)));
        assert_eq!(check_token("any"), Err(TokenProblem::Reserved));
        assert_eq!(check_token("system"), Err(TokenProblem::Reserved));
    }
}
