use super::*;

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn minimal() -> Template {
    Template {
        name: "minimal".into(),
        version: 1,
        description: "For tests.".into(),
        parameters: vec![ParameterSpec {
            name: "team".into(),
            description: "Owning team.".into(),
            default: None,
        }],
        steps: vec![step("repository", DriverKind::Repository)],
        files: BTreeMap::new(),
        monthly_cost_cents: 0,
    }
}

/// A directory of its own below the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("idp-templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_builtin_templates_are_valid() {
    let catalogue = Catalogue::builtin();
    let names: Vec<&str> = catalogue.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["service", "static-site"]);
    for template in catalogue.iter() {
        assert_eq!(template.validate(), Ok(()), "{}", template.name);
    }
    let service = catalogue.get("service").unwrap();
    let drivers: Vec<DriverKind> = service.steps.iter().map(|s| s.driver).collect();
    assert_eq!(
        drivers,
        [
            DriverKind::Repository,
            DriverKind::Database,
            DriverKind::Webhook
        ]
    );
    assert!(catalogue.get("nope").is_none());
}

#[test]
fn resolving_applies_defaults_and_keeps_given_values() {
    let service = Catalogue::builtin().get("service").unwrap().clone();
    assert_eq!(
        service.resolve(&values(&[("language", "go")])),
        Ok(values(&[("description", "A service"), ("language", "go")]))
    );
}

#[test]
fn resolving_refuses_unknown_and_missing_parameters_by_name() {
    let template = minimal();
    assert_eq!(
        template.resolve(&values(&[("team", "core"), ("colour", "red")])),
        Err(TemplateError::UnknownParameter("colour".into()))
    );
    assert_eq!(
        template.resolve(&BTreeMap::new()),
        Err(TemplateError::MissingParameter("team".into()))
    );
    assert_eq!(
        TemplateError::MissingParameter("team".into()).to_string(),
        "parameter \"team\" is required"
    );
}

#[test]
fn values_are_short_single_lines() {
    let template = minimal();
    assert_eq!(
        template.resolve(&values(&[("team", &"x".repeat(257))])),
        Err(TemplateError::ValueTooLong {
            parameter: "team".into(),
            max: 256
        })
    );
    assert!(
        template
            .resolve(&values(&[("team", &"é".repeat(256))]))
            .is_ok()
    );
    assert_eq!(
        template.resolve(&values(&[("team", "core\nevil=1")])),
        Err(TemplateError::ControlCharacter {
            parameter: "team".into()
        })
    );
}

#[test]
fn validation_names_the_broken_rule() {
    let check = |change: fn(&mut Template)| {
        let mut template = minimal();
        change(&mut template);
        template.validate()
    };
    assert!(matches!(
        check(|t| t.name = "My Template".into()),
        Err(TemplateError::InvalidName { .. })
    ));
    assert_eq!(check(|t| t.version = 0), Err(TemplateError::ZeroVersion));
    assert_eq!(check(|t| t.steps.clear()), Err(TemplateError::NoSteps));
    assert_eq!(
        check(|t| t.steps.push(step("repository", DriverKind::Webhook))),
        Err(TemplateError::DuplicateStep("repository".into()))
    );
    assert_eq!(
        check(|t| t.steps.push(step("db_main", DriverKind::Database))),
        Err(TemplateError::InvalidStepName {
            step: "db_main".into(),
            reason: NameError::InvalidCharacter { character: '_' }
        })
    );
    assert_eq!(
        check(|t| t.parameters.push(parameter("Team", "", "x"))),
        Err(TemplateError::InvalidParameterName("Team".into()))
    );
    assert_eq!(
        check(|t| t.parameters.push(parameter("team", "", "x"))),
        Err(TemplateError::DuplicateParameter("team".into()))
    );
    assert_eq!(
        check(|t| t.parameters.push(parameter("project", "", "x"))),
        Err(TemplateError::ReservedParameter("project".into()))
    );
    assert_eq!(
        check(|t| t.parameters.push(parameter("motd", "", "a\u{7}"))),
        Err(TemplateError::ControlCharacter {
            parameter: "motd".into()
        })
    );
}

#[test]
fn file_paths_stay_inside_the_repository() {
    for bad in [
        "",
        "/etc/passwd",
        "../outside",
        "src/../../outside",
        "src//main.rs",
        "src/",
        "./README.md",
        ".git/hooks/post-commit",
        "sub/.GIT/config",
        "a\\..\\b",
    ] {
        let mut template = minimal();
        template.files.insert(bad.into(), String::new());
        assert!(
            matches!(template.validate(), Err(TemplateError::InvalidFilePath { ref path, .. }) if path == bad),
            "{bad:?} was accepted"
        );
    }
    let mut template = minimal();
    template
        .files
        .insert(".github/workflows/ci.yml".into(), String::new());
    template.files.insert(".gitignore".into(), String::new());
    assert_eq!(template.validate(), Ok(()));
}

#[test]
fn render_replaces_known_placeholders_only() {
    let v = values(&[("project", "billing"), ("language", "{{ project }}")]);
    assert_eq!(
        render("# {{ project }} / {{project}} / {{  project  }}", &v),
        "# billing / billing / billing"
    );
    assert_eq!(
        render("{{ unknown }} {{ project", &v),
        "{{ unknown }} {{ project"
    );
    assert_eq!(render("{{ {{ project }} }}", &v), "{{ billing }}");
    // A value is inserted as it is, not rendered again.
    assert_eq!(render("{{ language }}", &v), "{{ project }}");
    assert_eq!(render("no placeholders, é", &v), "no placeholders, é");
}

#[test]
fn render_files_fills_in_the_project_name() {
    let site = Catalogue::builtin().get("static-site").unwrap().clone();
    let resolved = site.resolve(&BTreeMap::new()).unwrap();
    let files = site.render_files("docs", &resolved);
    assert_eq!(files["README.md"], "# docs\n\nA static site\n");
    assert!(files["index.html"].contains("<h1>docs</h1>"));
    assert!(!files.values().any(|content| content.contains("{{")));
}

#[test]
fn templates_in_json_refuse_unknown_fields() {
    let json = r#"{"name":"x","version":1,"description":"","steps":[{"name":"repository","driver":"repository"}],"colour":"red"}"#;
    let error = serde_json::from_str::<Template>(json).unwrap_err();
    assert!(error.to_string().contains("colour"), "{error}");
}

#[test]
fn an_override_replaces_the_builtin_template_of_the_same_name() {
    let dir = TempDir::new();
    let service = r#"{
        "name": "service", "version": 2, "description": "Ours.",
        "parameters": [{"name": "team"}],
        "steps": [{"name": "repository", "driver": "repository"}],
        "files": {"OWNERS": "{{ team }}\n"}
    }"#;
    std::fs::write(dir.0.join("service.json"), service).unwrap();
    std::fs::write(dir.0.join("notes.txt"), "not a template").unwrap();

    let catalogue = Catalogue::with_overrides(&dir.0).unwrap();

    let replaced = catalogue.get("service").unwrap();
    assert_eq!(replaced.version, 2);
    assert!(replaced.parameters[0].is_required());
    assert!(catalogue.get("static-site").is_some());
}

#[test]
fn a_broken_override_file_is_named() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("broken.json"), "{").unwrap();
    let error = Catalogue::with_overrides(&dir.0).unwrap_err();
    assert!(matches!(error, CatalogueError::Parse { .. }));
    assert!(error.to_string().contains("broken.json"), "{error}");

    std::fs::remove_file(dir.0.join("broken.json")).unwrap();
    std::fs::write(
        dir.0.join("stepless.json"),
        r#"{"name":"stepless","version":1,"description":"","steps":[]}"#,
    )
    .unwrap();
    let error = Catalogue::with_overrides(&dir.0).unwrap_err();
    assert!(
        matches!(
            error,
            CatalogueError::Invalid {
                error: TemplateError::NoSteps,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("stepless.json"), "{error}");
}

#[test]
fn a_missing_override_directory_is_named() {
    let missing = std::env::temp_dir().join(format!("idp-missing-{}", uuid::Uuid::new_v4()));
    let error = Catalogue::with_overrides(&missing).unwrap_err();
    assert!(matches!(error, CatalogueError::MissingDirectory(_)));
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}
