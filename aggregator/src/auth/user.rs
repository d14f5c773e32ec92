//! Who a request comes from, as Kubernetes names users.

use std::collections::BTreeMap;

use serde::Serialize;

/// The group every authenticated user gets.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of requests without credentials.
pub const ANONYMOUS: &str = "system:anonymous";
/// Members are allowed everything without a SubjectAccessReview.
pub const MASTERS: &str = "system:masters";

/// An authenticated (or anonymous) user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Extra attributes, keys lower-case (e.g. `authentication.kubernetes.io/node-name`).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        User {
            name: ANONYMOUS.to_owned(),
            groups: vec![UNAUTHENTICATED.to_owned()],
            ..User::default()
        }
    }

    /// Adds `system:authenticated` unless the user already carries it or
    /// `system:unauthenticated` (k8s.io/apiserver's AuthenticatedGroupAdder).
    pub fn with_authenticated_group(mut self) -> Self {
        if !self
            .groups
            .iter()
            .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
        {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_group_added_once() {
        let u = User {
            name: "alice".into(),
            ..User::default()
        }
        .with_authenticated_group()
        .with_authenticated_group();
        assert_eq!(u.groups, vec![AUTHENTICATED.to_owned()]);
        let a = User::anonymous().with_authenticated_group();
        assert_eq!(a.groups, vec![UNAUTHENTICATED.to_owned()]);
    }
}
