//! What each role may do: one table ([`GRANTS`]) and one check per route, the [`Permitted`]
//! extractor naming the permission the route needs. `docs/identity.md` prints the table; a test
//! holds the two together and calls every administration route as each role.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use idp_events::identity::api_key::Scope;
use idp_events::identity::user::{ROLE_ADMIN, ROLE_BILLING_ADMIN, ROLE_SUPPORT, ROLE_USER};

use crate::error::ApiError;
use crate::extract::{AuthUser, authenticate_enrolled};
use crate::startup::AppState;

macro_rules! permissions {
    ($($(#[doc = $doc:literal])* $marker:ident => $variant:ident, $name:literal;)*) => {
        /// Something only some roles may do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Permission {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Permission {
            /// Every permission, in the order of the documentation's table.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// Its name in the documentation's table.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }

        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $marker;

            impl Requires for $marker {
                const PERMISSION: Permission = Permission::$variant;
            }
        )*
    };
}

/// A route's permission as a type, for [`Permitted`].
pub trait Requires: Send + Sync + 'static {
    /// The permission.
    const PERMISSION: Permission;
}

permissions! {
    /// List accounts and read one (`GET /v1/admin/users`, `GET /v1/admin/users/{id}`).
    ReadUsers => ReadUsers, "read_users";
    /// Export everything idp holds about a person (`GET /v1/admin/users/{id}/export`).
    ExportPersonalData => ExportPersonalData, "export_personal_data";
    /// Lock, unlock, end sessions, reset the second factor, resend the verification email.
    ManageUsers => ManageUsers, "manage_users";
    /// Replace an account's roles.
    ManageRoles => ManageRoles, "manage_roles";
    /// Erase a person.
    ErasePeople => ErasePeople, "erase_people";
    /// Read the event log: events, their export, any stream's history.
    ReadEvents => ReadEvents, "read_events";
    /// Verify the log's chain and read its latest seal.
    ReadAudit => ReadAudit, "read_audit";
    /// List dead jobs.
    ReadJobs => ReadJobs, "read_jobs";
    /// Retry dead jobs.
    ManageJobs => ManageJobs, "manage_jobs";
    /// Read other people's projects, their lists and their event streams.
    ReadProjectsOfOthers => ReadProjectsOfOthers, "read_projects_of_others";
    /// Retry, delete and issue credentials for other people's projects.
    ManageProjectsOfOthers => ManageProjectsOfOthers, "manage_projects_of_others";
    /// Change plans and their limits.
    ManagePlans => ManagePlans, "manage_plans";
    /// Create, disable, enable and delete service accounts and manage their API keys.
    ManageServiceAccounts => ManageServiceAccounts, "manage_service_accounts";
    /// List people's API keys and revoke them.
    ManageApiKeys => ManageApiKeys, "manage_api_keys";
}

/// What each role may do. Every account has `user`, which grants nothing here: its holder uses
/// their own account and projects.
pub const GRANTS: &[(&str, &[Permission])] = {
    use Permission as P;
    &[
        (ROLE_USER, &[]),
        (
            ROLE_SUPPORT,
            &[
                P::ReadUsers,
                P::ReadEvents,
                P::ReadAudit,
                P::ReadJobs,
                P::ReadProjectsOfOthers,
            ],
        ),
        (ROLE_BILLING_ADMIN, &[P::ManagePlans]),
        (ROLE_ADMIN, P::ALL),
    ]
};

/// Whether any of `roles` grants `permission`.
pub fn granted(roles: &[String], permission: Permission) -> bool {
    GRANTS
        .iter()
        .filter(|(role, _)| roles.iter().any(|r| r == role))
        .any(|(_, permissions)| permissions.contains(&permission))
}

/// An authenticated caller whose account, as it is now (not as of the token), has a role that
/// grants `P`: a role granted or removed takes effect on the next request. 401 without a valid
/// token, 403 without the permission, 403 `second-factor-enrolment-required` for a role of
/// `MFA_REQUIRED_ROLES` without a second factor.
#[derive(Debug, Clone)]
pub struct Permitted<P: Requires> {
    /// The caller.
    pub user: AuthUser,
    permission: PhantomData<P>,
}

impl<P: Requires> FromRequestParts<AppState> for Permitted<P> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (user, session) = authenticate_enrolled(parts, state).await?;
        user.require_scope(P::PERMISSION.key_scope())?;
        let roles = user.current_roles(state).await?;
        if !granted(&roles, P::PERMISSION) {
            return Err(ApiError::Forbidden);
        }
        // The roles are checked as they are now, so is the second factor they may need.
        if state.identity.must_enrol(&roles, &session) {
            return Err(ApiError::SecondFactorEnrolmentRequired);
        }
        Ok(Self {
            user,
            permission: PhantomData,
        })
    }
}

impl Permission {
    /// The scope an API key needs to use this permission of its owner's: `audit:read` for
    /// reading the log and the audit, `admin` for everything else.
    pub fn key_scope(self) -> Scope {
        match self {
            Self::ReadEvents | Self::ReadAudit => Scope::AuditRead,
            _ => Scope::Admin,
        }
    }
}

impl AuthUser {
    /// Whether the caller's account, as it is now, may do what `permission` allows: for routes
    /// open to everyone that do more for some (another person's project). With an API key,
    /// only if the key has the permission's scope too.
    pub async fn may(&self, state: &AppState, permission: Permission) -> Result<bool, ApiError> {
        if !self.may_with_key(permission) {
            return Ok(false);
        }
        Ok(granted(&self.current_roles(state).await?, permission))
    }

    /// Whether the request's credential allows `permission`: a session does (its roles
    /// decide), an API key only with the permission's scope.
    pub fn may_with_key(&self, permission: Permission) -> bool {
        self.require_scope(permission.key_scope()).is_ok()
    }

    /// The roles of the caller's account as they are now: a person's folded from their
    /// stream, a service account's as this request's key lookup read them from its row.
    pub async fn current_roles(&self, state: &AppState) -> Result<Vec<String>, ApiError> {
        if self.key.as_ref().is_some_and(|k| k.service_account) {
            Ok(self.roles.clone())
        } else {
            Ok(state.identity.load_user(self.user_id).await?.roles)
        }
    }
}

#[cfg(test)]
mod tests {
    use idp_events::identity::user::ROLES;

    use super::*;

    #[test]
    fn every_role_has_a_row_and_every_row_is_a_role() {
        let rows: Vec<_> = GRANTS.iter().map(|(role, _)| *role).collect();
        assert_eq!(rows, ROLES);
    }

    #[test]
    fn a_permission_is_granted_by_a_role_that_has_it_and_by_no_other() {
        let roles = |names: &[&str]| names.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>();
        assert!(granted(&roles(&["user", "admin"]), Permission::ErasePeople));
        assert!(granted(&roles(&["user", "support"]), Permission::ReadUsers));
        assert!(!granted(
            &roles(&["user", "support"]),
            Permission::ManageUsers
        ));
        assert!(!granted(
            &roles(&["user", "billing_admin"]),
            Permission::ReadUsers
        ));
        assert!(granted(
            &roles(&["user", "billing_admin"]),
            Permission::ManagePlans
        ));
        assert!(!granted(
            &roles(&["user"]),
            Permission::ReadProjectsOfOthers
        ));
        assert!(!granted(&roles(&[]), Permission::ReadUsers));
        // A role idp does not know grants nothing.
        assert!(!granted(&roles(&["root"]), Permission::ReadUsers));
    }
}
