//! The Docker Compose packaging (`compose/`), checked without a Docker engine: the files parse,
//! and everything they name (paths, build targets, services, health checks, data sources,
//! metrics and their labels, environment variables) exists where they expect it.
//!
//! Each test collects every problem it finds and fails once, listing them all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// Labels Prometheus adds to every scraped series.
const SCRAPE_LABELS: &[&str] = &["job", "instance"];

/// The Prometheus jobs the dashboard and docs/operations.md rely on.
const SCRAPE_JOBS: &[&str] = &["idp-api", "idp-worker"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ops/ has a parent")
        .to_path_buf()
}

fn compose_dir() -> PathBuf {
    repo_root().join("compose")
}

/// A path as people read it in a failure: relative to the repository, without `.` or `..`.
fn shown(path: &Path) -> String {
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    let root = repo_root();
    match normal.strip_prefix(&root) {
        Ok(relative) if relative.as_os_str().is_empty() => ".".to_owned(),
        Ok(relative) => relative.display().to_string(),
        Err(_) => normal.display().to_string(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", shown(path)))
}

fn parse_yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", shown(path)))
}

fn parse_json(path: &Path) -> Json {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", shown(path)))
}

/// Fails listing every problem, or does nothing when there are none.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

/// compose/compose.yaml.
struct Compose {
    raw: String,
    doc: Yaml,
}

impl Compose {
    fn load() -> Self {
        let path = compose_dir().join("compose.yaml");
        let raw = read(&path);
        let doc = serde_norway::from_str(&raw)
            .unwrap_or_else(|e| panic!("compose/compose.yaml is not valid YAML: {e}"));
        Self { raw, doc }
    }

    fn services(&self) -> BTreeMap<String, &Yaml> {
        let services = self
            .doc
            .get("services")
            .and_then(Yaml::as_mapping)
            .expect("compose/compose.yaml has a `services` mapping");
        services
            .iter()
            .map(|(name, service)| {
                let name = name.as_str().expect("service names are strings").to_owned();
                (name, service)
            })
            .collect()
    }

    /// The first service whose image starts with `prefix` (e.g. `grafana/grafana`).
    fn service_with_image(&self, prefix: &str) -> Option<(String, &Yaml)> {
        self.services().into_iter().find(|(_, service)| {
            service
                .get("image")
                .and_then(Yaml::as_str)
                .is_some_and(|image| image.starts_with(prefix))
        })
    }
}

/// One volume entry of a service: a bind mount (host path) or a named volume.
enum Mount {
    Bind { source: String, target: String },
    Named { name: String, target: String },
}

fn mounts(service: &Yaml) -> Vec<Mount> {
    let Some(volumes) = service.get("volumes").and_then(Yaml::as_sequence) else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|volume| {
            let (kind, source, target) = match volume {
                Yaml::String(short) => {
                    let mut parts = short.splitn(3, ':');
                    let source = parts.next().unwrap_or_default().to_owned();
                    let target = parts.next().unwrap_or_default().to_owned();
                    let bind = source.starts_with('.') || source.starts_with('/');
                    (if bind { "bind" } else { "volume" }, source, target)
                }
                long => (
                    long.get("type").and_then(Yaml::as_str).unwrap_or("volume"),
                    long.get("source")
                        .and_then(Yaml::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    long.get("target")
                        .and_then(Yaml::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ),
            };
            match kind {
                "bind" => Some(Mount::Bind { source, target }),
                "volume" => Some(Mount::Named {
                    name: source,
                    target,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Where a path inside a service's container comes from on the host, through its bind mounts
/// (the longest mount target that contains the path wins).
fn host_path(service: &Yaml, container_path: &str) -> Option<PathBuf> {
    mounts(service)
        .into_iter()
        .filter_map(|mount| match mount {
            Mount::Bind { source, target } => {
                let target = target.trim_end_matches('/').to_owned();
                let rest = container_path.strip_prefix(&target)?;
                let mut path = compose_dir().join(source);
                if !rest.is_empty() {
                    path.push(rest.strip_prefix('/')?);
                }
                Some((target.len(), path))
            }
            Mount::Named { .. } => None,
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, path)| path)
}

/// A service's environment as name -> value, from either the mapping or the list form.
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Yaml::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Null => String::new(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                (k.as_str().unwrap_or_default().to_owned(), value)
            })
            .collect(),
        Some(Yaml::Sequence(list)) => list
            .iter()
            .filter_map(Yaml::as_str)
            .map(|entry| match entry.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (entry.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `depends_on` as name -> condition (`None` in the list form, which has none).
fn dependencies(service: &Yaml) -> Vec<(String, Option<String>)> {
    match service.get("depends_on") {
        Some(Yaml::Sequence(list)) => list
            .iter()
            .map(|name| (name.as_str().unwrap_or_default().to_owned(), None))
            .collect(),
        Some(Yaml::Mapping(map)) => map
            .iter()
            .map(|(name, spec)| {
                let condition = spec
                    .get("condition")
                    .and_then(Yaml::as_str)
                    .map(str::to_owned);
                (name.as_str().unwrap_or_default().to_owned(), condition)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The stage names of a Dockerfile (`FROM <image> AS <name>`), in order.
fn dockerfile_stages(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [from, .., as_, name]
                    if from.eq_ignore_ascii_case("FROM") && as_.eq_ignore_ascii_case("AS") =>
                {
                    Some((*name).to_owned())
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn compose_yaml_parses_and_every_service_has_an_image_or_a_build() {
    let compose = Compose::load();
    let services = compose.services();
    let mut problems = Vec::new();
    if services.is_empty() {
        problems.push("no services are defined".to_owned());
    }
    for (name, service) in &services {
        if service.get("image").is_none() && service.get("build").is_none() {
            problems.push(format!("service `{name}` has neither `image` nor `build`"));
        }
    }
    assert_no_problems("compose/compose.yaml", &problems);
}

#[test]
fn every_build_context_dockerfile_and_mounted_path_exists() {
    let compose = Compose::load();
    let declared_volumes: BTreeSet<String> = compose
        .doc
        .get("volumes")
        .and_then(Yaml::as_mapping)
        .map(|map| {
            map.keys()
                .filter_map(Yaml::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        match service.get("build") {
            None => {}
            Some(Yaml::String(context)) => {
                let context = compose_dir().join(context);
                if !context.is_dir() {
                    problems.push(format!(
                        "service `{name}`: build context {} is not a directory",
                        shown(&context)
                    ));
                }
                if !context.join("Dockerfile").is_file() {
                    problems.push(format!(
                        "service `{name}`: {} has no Dockerfile",
                        shown(&context)
                    ));
                }
            }
            Some(build) => {
                let context =
                    compose_dir().join(build.get("context").and_then(Yaml::as_str).unwrap_or("."));
                if !context.is_dir() {
                    problems.push(format!(
                        "service `{name}`: build context {} is not a directory",
                        shown(&context)
                    ));
                }
                let dockerfile = build
                    .get("dockerfile")
                    .and_then(Yaml::as_str)
                    .unwrap_or("Dockerfile");
                if !context.join(dockerfile).is_file() {
                    problems.push(format!(
                        "service `{name}`: dockerfile `{dockerfile}` does not exist in build context {}",
                        shown(&context)
                    ));
                }
            }
        }
        for mount in mounts(service) {
            match mount {
                Mount::Bind { source, target } => {
                    if source.starts_with('/') {
                        problems.push(format!(
                            "service `{name}`: `{source}` -> `{target}` binds an absolute host path; use one relative to compose/"
                        ));
                    } else if !compose_dir().join(&source).exists() {
                        problems.push(format!(
                            "service `{name}`: bind-mounted `{source}` (-> `{target}`) does not exist relative to compose/"
                        ));
                    }
                }
                Mount::Named {
                    name: volume,
                    target,
                } => {
                    if !declared_volumes.contains(&volume) {
                        problems.push(format!(
                            "service `{name}`: volume `{volume}` (-> `{target}`) is not declared under top-level `volumes`"
                        ));
                    }
                }
            }
        }
    }
    assert_no_problems("paths named in compose/compose.yaml", &problems);
}

#[test]
fn the_dockerfile_defines_every_target_compose_builds_and_copies_what_exists() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    let mut dockerfiles: BTreeMap<PathBuf, PathBuf> = BTreeMap::new(); // dockerfile -> context
    for (name, service) in compose.services() {
        let Some(build) = service.get("build").filter(|b| b.is_mapping()) else {
            continue;
        };
        let context =
            compose_dir().join(build.get("context").and_then(Yaml::as_str).unwrap_or("."));
        let dockerfile = context.join(
            build
                .get("dockerfile")
                .and_then(Yaml::as_str)
                .unwrap_or("Dockerfile"),
        );
        let Ok(text) = std::fs::read_to_string(&dockerfile) else {
            problems.push(format!(
                "service `{name}`: cannot read {}",
                shown(&dockerfile)
            ));
            continue;
        };
        if let Some(target) = build.get("target").and_then(Yaml::as_str)
            && !dockerfile_stages(&text).iter().any(|stage| stage == target)
        {
            problems.push(format!(
                "service `{name}`: build target `{target}` is not a stage (`FROM ... AS {target}`) of {}",
                shown(&dockerfile)
            ));
        }
        dockerfiles.insert(dockerfile, context);
    }
    if dockerfiles.is_empty() {
        problems.push("no service is built from a Dockerfile".to_owned());
    }

    for (dockerfile, context) in &dockerfiles {
        let text = read(dockerfile);
        let ignored: Vec<String> = std::fs::read_to_string(context.join(".dockerignore"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with('#') && !l.starts_with('!') && !l.contains('*')
            })
            .map(|l| l.trim_end_matches('/').to_owned())
            .collect();
        let mut stages = Vec::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [from, .., as_, stage] = words.as_slice()
                && from.eq_ignore_ascii_case("FROM")
                && as_.eq_ignore_ascii_case("AS")
            {
                stages.push((*stage).to_owned());
            }
            let Some((copy, args)) = words.split_first() else {
                continue;
            };
            if !copy.eq_ignore_ascii_case("COPY") {
                continue;
            }
            if let Some(from) = args.iter().find_map(|a| a.strip_prefix("--from=")) {
                if !stages.iter().any(|s| s == from) {
                    problems.push(format!(
                        "{}: `{}` copies from `{from}`, which is not an earlier stage",
                        shown(dockerfile),
                        line.trim()
                    ));
                }
                continue;
            }
            let paths: Vec<&str> = args
                .iter()
                .copied()
                .filter(|a| !a.starts_with("--"))
                .collect();
            let Some((_, sources)) = paths.split_last() else {
                continue;
            };
            for source in sources.iter().filter(|s| !s.contains('*')) {
                let source = source.trim_start_matches("./").trim_end_matches('/');
                if source == "." {
                    continue;
                }
                if !context.join(source).exists() {
                    problems.push(format!(
                        "{}: `{}` copies `{source}`, which is not in the build context {}",
                        shown(dockerfile),
                        line.trim(),
                        shown(context)
                    ));
                }
                if let Some(pattern) = ignored
                    .iter()
                    .find(|p| source == p.as_str() || source.starts_with(&format!("{p}/")))
                {
                    problems.push(format!(
                        "{}: `{}` copies `{source}`, which .dockerignore excludes (`{pattern}`)",
                        shown(dockerfile),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert_no_problems("Dockerfile targets and copies", &problems);
}

#[test]
fn every_dependency_names_a_service_and_waits_for_a_condition_it_can_meet() {
    let compose = Compose::load();
    let services = compose.services();
    let mut problems = Vec::new();
    for (name, service) in &services {
        for (dependency, condition) in dependencies(service) {
            let Some(target) = services.get(&dependency) else {
                problems.push(format!(
                    "service `{name}` depends on `{dependency}`, which is not a service"
                ));
                continue;
            };
            match condition.as_deref() {
                None => problems.push(format!(
                    "service `{name}` depends on `{dependency}` without a `condition` (use service_healthy, service_started or service_completed_successfully)"
                )),
                Some("service_healthy") => {
                    let check = target.get("healthcheck");
                    let disabled = check
                        .and_then(|c| c.get("disable"))
                        .and_then(Yaml::as_bool)
                        .unwrap_or(false);
                    let test = check.and_then(|c| c.get("test"));
                    let none = match test {
                        Some(Yaml::String(s)) => s == "NONE",
                        Some(Yaml::Sequence(seq)) => seq.first().and_then(Yaml::as_str) == Some("NONE"),
                        _ => true,
                    };
                    if check.is_none() || disabled || none {
                        problems.push(format!(
                            "service `{name}` waits for `{dependency}` to be healthy, but `{dependency}` has no health check"
                        ));
                    }
                }
                Some("service_started" | "service_completed_successfully") => {}
                Some(other) => problems.push(format!(
                    "service `{name}` depends on `{dependency}` with unknown condition `{other}`"
                )),
            }
        }
    }
    assert_no_problems("depends_on in compose/compose.yaml", &problems);
}

#[test]
fn every_port_is_published_on_localhost_only() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        for port in service
            .get("ports")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
        {
            let published_on = match port {
                Yaml::String(short) => short.starts_with("127.0.0.1:").then_some(()),
                Yaml::Number(_) => None,
                long => {
                    (long.get("host_ip").and_then(Yaml::as_str) == Some("127.0.0.1")).then_some(())
                }
            };
            if published_on.is_none() {
                let shown = serde_norway::to_string(port).unwrap_or_default();
                problems.push(format!(
                    "service `{name}` publishes `{}` on every interface; prefix it with 127.0.0.1:",
                    shown.trim()
                ));
            }
        }
    }
    assert_no_problems("ports in compose/compose.yaml", &problems);
}

/// The ports a service listens on inside its network: its published container ports, its
/// `expose` list, and the ports of `*_ADDR` variables it is given.
fn listening_ports(service: &Yaml) -> BTreeSet<String> {
    let mut ports = BTreeSet::new();
    for port in service
        .get("ports")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        match port {
            Yaml::String(short) => {
                if let Some(container) = short.rsplit(':').next() {
                    ports.insert(container.split('/').next().unwrap_or_default().to_owned());
                }
            }
            long => {
                if let Some(target) = long.get("target") {
                    ports.insert(
                        serde_norway::to_string(target)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    );
                }
            }
        }
    }
    for port in service
        .get("expose")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        ports.insert(
            serde_norway::to_string(port)
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
                .to_owned(),
        );
    }
    for (key, value) in environment(service) {
        if key.ends_with("_ADDR")
            && let Some((_, port)) = value.rsplit_once(':')
        {
            ports.insert(port.to_owned());
        }
    }
    ports
}

#[test]
fn prometheus_scrapes_the_api_and_the_worker_at_their_compose_services() {
    let compose = Compose::load();
    let services = compose.services();
    let (prometheus_name, prometheus) = compose
        .service_with_image("prom/prometheus")
        .expect("compose/compose.yaml runs a prom/prometheus service");
    let config_path = host_path(prometheus, "/etc/prometheus/prometheus.yml").unwrap_or_else(|| {
        panic!("service `{prometheus_name}` does not bind-mount a file at /etc/prometheus/prometheus.yml")
    });
    let config = parse_yaml(&config_path);
    let mut problems = Vec::new();
    let mut jobs = BTreeSet::new();
    let scrape_configs = config
        .get("scrape_configs")
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default();
    if scrape_configs.is_empty() {
        problems.push(format!("{} has no scrape_configs", shown(&config_path)));
    }
    for scrape in &scrape_configs {
        let job = scrape
            .get("job_name")
            .and_then(Yaml::as_str)
            .unwrap_or_default()
            .to_owned();
        let path = scrape
            .get("metrics_path")
            .and_then(Yaml::as_str)
            .unwrap_or("/metrics");
        if path != "/metrics" {
            problems.push(format!(
                "job `{job}` scrapes `{path}`; both binaries serve /metrics"
            ));
        }
        let targets: Vec<&str> = scrape
            .get("static_configs")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("targets").and_then(Yaml::as_sequence))
            .flatten()
            .filter_map(Yaml::as_str)
            .collect();
        if targets.is_empty() {
            problems.push(format!("job `{job}` has no static targets"));
        }
        for target in targets {
            let (host, port) = target.rsplit_once(':').unwrap_or((target, ""));
            match services.get(host) {
                None => problems.push(format!(
                    "job `{job}` scrapes `{target}`, but `{host}` is not a compose service"
                )),
                Some(service) => {
                    let ports = listening_ports(service);
                    if !ports.contains(port) {
                        problems.push(format!(
                            "job `{job}` scrapes `{target}`, but service `{host}` listens on {ports:?}"
                        ));
                    }
                }
            }
        }
        jobs.insert(job);
    }
    for job in SCRAPE_JOBS {
        if !jobs.contains(*job) {
            problems.push(format!("{} has no job named `{job}`", shown(&config_path)));
        }
    }
    assert_no_problems("Prometheus scrape configuration", &problems);
}

/// The Grafana service, its provisioning and the dashboards it loads.
struct Grafana {
    /// uid -> (type, url) of each provisioned data source.
    datasources: BTreeMap<String, (String, String)>,
    /// Every dashboard file the providers load, parsed.
    dashboards: Vec<(PathBuf, Json)>,
    /// What was found wrong while loading all this.
    problems: Vec<String>,
}

impl Grafana {
    fn load(compose: &Compose) -> Self {
        let (name, service) = compose
            .service_with_image("grafana/grafana")
            .expect("compose/compose.yaml runs a grafana/grafana service");
        let mut problems = Vec::new();
        let provisioning = host_path(service, "/etc/grafana/provisioning").unwrap_or_else(|| {
            panic!("service `{name}` does not bind-mount a directory at /etc/grafana/provisioning")
        });
        let services = compose.services();

        let mut datasources = BTreeMap::new();
        for file in yaml_files(&provisioning.join("datasources")) {
            let doc = parse_yaml(&file);
            for source in doc
                .get("datasources")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                let field = |key: &str| {
                    source
                        .get(key)
                        .and_then(Yaml::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let (uid, kind, url) = (field("uid"), field("type"), field("url"));
                if uid.is_empty() {
                    problems.push(format!(
                        "{}: data source `{}` has no uid",
                        shown(&file),
                        field("name")
                    ));
                }
                let host = url
                    .split_once("://")
                    .map(|(_, rest)| rest.split([':', '/']).next().unwrap_or_default())
                    .unwrap_or_default();
                if !services.contains_key(host) {
                    problems.push(format!(
                        "{}: data source `{uid}` points at `{url}`, but `{host}` is not a compose service",
                        shown(&file)
                    ));
                }
                datasources.insert(uid, (kind, url));
            }
        }
        if datasources.is_empty() {
            problems.push(format!(
                "{} provisions no data source",
                shown(&provisioning.join("datasources"))
            ));
        }

        let mut dashboards = Vec::new();
        for file in yaml_files(&provisioning.join("dashboards")) {
            let doc = parse_yaml(&file);
            for provider in doc
                .get("providers")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
            {
                let Some(path) = provider
                    .get("options")
                    .and_then(|o| o.get("path"))
                    .and_then(Yaml::as_str)
                else {
                    problems.push(format!("{}: a provider has no options.path", shown(&file)));
                    continue;
                };
                let Some(dir) = host_path(service, path) else {
                    problems.push(format!(
                        "{}: dashboards path `{path}` is not bind-mounted into service `{name}`",
                        shown(&file)
                    ));
                    continue;
                };
                let found: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map(|entries| {
                        entries
                            .filter_map(Result::ok)
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "json"))
                            .collect()
                    })
                    .unwrap_or_default();
                if found.is_empty() {
                    problems.push(format!(
                        "{}: dashboards path `{path}` ({}) holds no dashboard JSON",
                        shown(&file),
                        shown(&dir)
                    ));
                }
                dashboards.extend(found.into_iter().map(|p| {
                    let json = parse_json(&p);
                    (p, json)
                }));
            }
        }
        if !dashboards
            .iter()
            .any(|(path, _)| path.file_name().is_some_and(|n| n == "idp.json"))
        {
            problems.push("no dashboard provider loads idp.json".to_owned());
        }

        if let Some(home) = environment(service).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
            match host_path(service, home) {
                Some(path) if path.is_file() => {}
                _ => problems.push(format!(
                    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH `{home}` is no file mounted into service `{name}`"
                )),
            }
        }
        Self {
            datasources,
            dashboards,
            problems,
        }
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", shown(dir)))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no YAML file", shown(dir));
    files
}

/// Every panel of a dashboard, rows' collapsed panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: Option<&'a Json>, out: &mut Vec<&'a Json>) {
        for panel in list.and_then(Json::as_array).into_iter().flatten() {
            out.push(panel);
            walk(panel.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn panel_title(panel: &Json) -> String {
    panel
        .get("title")
        .and_then(Json::as_str)
        .unwrap_or("(untitled)")
        .to_owned()
}

#[test]
fn grafana_provisions_the_prometheus_data_source_that_every_dashboard_panel_uses() {
    let compose = Compose::load();
    let grafana = Grafana::load(&compose);
    let mut problems = grafana.problems.clone();
    if !grafana
        .datasources
        .values()
        .any(|(kind, _)| kind == "prometheus")
    {
        problems.push("no data source of type prometheus is provisioned".to_owned());
    }
    let uids: BTreeSet<&String> = grafana.datasources.keys().collect();
    let check = |owner: String, source: Option<&Json>, problems: &mut Vec<String>| {
        match source {
        Some(Json::Object(source)) => {
            let uid = source.get("uid").and_then(Json::as_str).unwrap_or_default();
            if !uids.contains(&uid.to_owned()) {
                problems.push(format!("{owner} uses data source uid `{uid}`; provisioned: {uids:?}"));
            }
        }
        other => problems.push(format!(
            "{owner} names its data source as {other:?}; use {{\"type\": \"prometheus\", \"uid\": ...}} with a provisioned uid"
        )),
    }
    };
    for (path, dashboard) in &grafana.dashboards {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        for panel in panels(dashboard) {
            let Some(targets) = panel.get("targets").and_then(Json::as_array) else {
                continue;
            };
            let title = panel_title(panel);
            check(
                format!("{file}: panel `{title}`"),
                panel.get("datasource"),
                &mut problems,
            );
            for target in targets {
                if let Some(source) = target.get("datasource") {
                    let id = target.get("refId").and_then(Json::as_str).unwrap_or("?");
                    check(
                        format!("{file}: panel `{title}` query {id}"),
                        Some(source),
                        &mut problems,
                    );
                }
            }
        }
        for variable in dashboard
            .pointer("/templating/list")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("type").and_then(Json::as_str) == Some("query"))
        {
            let name = variable.get("name").and_then(Json::as_str).unwrap_or("?");
            check(
                format!("{file}: variable `{name}`"),
                variable.get("datasource"),
                &mut problems,
            );
        }
    }
    assert_no_problems("Grafana provisioning", &problems);
}

/// A documented metric: its type and labels.
struct Metric {
    kind: String,
    labels: BTreeSet<String>,
}

/// The table under `## Metrics` in docs/operations.md: metric name -> type and labels.
fn documented_metrics() -> BTreeMap<String, Metric> {
    let path = repo_root().join("docs/operations.md");
    let text = read(&path);
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .unwrap_or_else(|| panic!("{} has no `## Metrics` section", shown(&path)));
    let mut metrics = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, labels, ..] = cells.as_slice() else {
            panic!("docs/operations.md: metrics row without type and labels: {line}");
        };
        let name = name.trim_matches('`').to_owned();
        assert!(
            ["counter", "gauge", "histogram"].contains(kind),
            "docs/operations.md: `{name}` has type `{kind}`; use counter, gauge or histogram"
        );
        let labels = labels
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        metrics.insert(
            name,
            Metric {
                kind: (*kind).to_owned(),
                labels,
            },
        );
    }
    assert!(
        !metrics.is_empty(),
        "docs/operations.md: the Metrics table has no rows"
    );
    metrics
}

/// A series selector in a PromQL expression: the metric name and the labels it matches on.
#[derive(Debug)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// What a PromQL expression refers to: its selectors and the labels it groups by.
#[derive(Debug, Default)]
struct PromQl {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

/// Keywords and operators that read like identifiers but name no series.
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// A small PromQL reader: enough to find metric names, label matchers and grouping labels in
/// the dashboard's queries (not a validator of PromQL syntax).
fn read_promql(expr: &str) -> PromQl {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = PromQl::default();
    let mut i = 0;
    // The label list that follows a grouping keyword goes to `grouping`; matchers right after
    // a metric name belong to it.
    let mut grouping_next = false;
    let mut after_metric = false;
    let skip_string = |mut i: usize| {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            if chars[i] == '\\' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c != '(' {
            grouping_next = false;
        }
        if c != '{' && !(c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            after_metric = false;
        }
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Label matchers: `name op "value"`, comma-separated.
            let mut labels = Vec::new();
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                    i = skip_string(i);
                } else if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
                    let start = i;
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    labels.push(chars[start..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
            match out.selectors.last_mut() {
                Some(selector) if after_metric => selector.labels = labels,
                _ => out.selectors.push(Selector {
                    metric: String::new(),
                    labels,
                }),
            }
            after_metric = false;
        } else if c == '(' && grouping_next {
            grouping_next = false;
            i += 1;
            let start = i;
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            let list: String = chars[start..i.min(chars.len())].iter().collect();
            out.grouping.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
            i += 1;
        } else if c == '$' {
            // A Grafana variable outside a range ($__interval, $job).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (0.95, 1e3, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            after_metric = false;
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                grouping_next = true;
            } else if next == Some(&'(') || PROMQL_WORDS.contains(&word.as_str()) {
                // A function or an aggregation.
            } else {
                out.selectors.push(Selector {
                    metric: word,
                    labels: Vec::new(),
                });
                after_metric = true;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The documented metric a series name belongs to (`x_bucket` -> histogram `x`).
fn documented<'a>(
    metrics: &'a BTreeMap<String, Metric>,
    series: &str,
) -> Option<(&'a str, &'a Metric)> {
    if let Some((name, metric)) = metrics.get_key_value(series) {
        return Some((name, metric));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        let (name, metric) = metrics.get_key_value(base)?;
        (metric.kind == "histogram").then_some((name.as_str(), metric))
    })
}

#[test]
fn the_dashboard_queries_only_documented_metrics_with_their_labels() {
    let compose = Compose::load();
    let grafana = Grafana::load(&compose);
    let metrics = documented_metrics();
    let mut problems = Vec::new();
    let mut queries = 0;
    for (path, dashboard) in &grafana.dashboards {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        for panel in panels(dashboard) {
            let title = panel_title(panel);
            for target in panel
                .get("targets")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                let Some(expr) = target.get("expr").and_then(Json::as_str) else {
                    continue;
                };
                queries += 1;
                let at = format!("{file}: panel `{title}`: `{expr}`");
                let query = read_promql(expr);
                if query.selectors.is_empty() {
                    problems.push(format!("{at}: no metric found in the query"));
                }
                // Labels any part of the query may name: those of its metrics, plus scrape
                // labels, plus `le` where histogram buckets are read. When a metric is unknown,
                // only the metric is reported.
                let mut known: BTreeSet<String> =
                    SCRAPE_LABELS.iter().map(|l| (*l).to_owned()).collect();
                let mut every_metric_documented = true;
                for selector in &query.selectors {
                    if selector.metric.is_empty() {
                        problems.push(format!("{at}: a selector without a metric name"));
                        every_metric_documented = false;
                        continue;
                    }
                    if !selector.metric.starts_with("idp_") {
                        problems.push(format!(
                            "{at}: `{}` does not start with idp_",
                            selector.metric
                        ));
                        every_metric_documented = false;
                        continue;
                    }
                    let Some((_, metric)) = documented(&metrics, &selector.metric) else {
                        problems.push(format!(
                            "{at}: `{}` is not in the Metrics table of docs/operations.md",
                            selector.metric
                        ));
                        every_metric_documented = false;
                        continue;
                    };
                    let mut own: BTreeSet<String> = metric.labels.clone();
                    own.extend(SCRAPE_LABELS.iter().map(|l| (*l).to_owned()));
                    if selector.metric.ends_with("_bucket") {
                        own.insert("le".to_owned());
                    }
                    for label in &selector.labels {
                        if !own.contains(label) {
                            problems.push(format!(
                                "{at}: `{}` has no label `{label}` (documented: {:?})",
                                selector.metric, metric.labels
                            ));
                        }
                    }
                    known.extend(own);
                }
                if !every_metric_documented {
                    continue;
                }
                for label in &query.grouping {
                    if !known.contains(label) {
                        problems.push(format!(
                            "{at}: groups by `{label}`, which none of its metrics has"
                        ));
                    }
                }
                let legend = target
                    .get("legendFormat")
                    .and_then(Json::as_str)
                    .unwrap_or_default();
                for label in legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|s| s.split_once("}}"))
                    .map(|(l, _)| l.trim())
                {
                    if !known.contains(label) {
                        problems.push(format!(
                            "{at}: legend names `{label}`, which none of its metrics has"
                        ));
                    }
                }
            }
        }
    }
    if queries == 0 {
        problems.push("the dashboards hold no PromQL query".to_owned());
    }
    assert_no_problems("dashboard queries against docs/operations.md", &problems);
}

#[test]
fn the_promql_reader_finds_metrics_matchers_and_grouping_labels() {
    let query = read_promql(
        r#"histogram_quantile(0.95, sum by (le, route) (rate(idp_x_bucket{status=~"5..", route!="/a{b}"}[$__rate_interval]))) / on(instance) group_left idp_y offset 5m"#,
    );
    let metrics: Vec<&str> = query.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["idp_x_bucket", "idp_y"]);
    assert_eq!(query.selectors[0].labels, ["status", "route"]);
    assert_eq!(query.grouping, ["le", "route", "instance"]);
}

/// Variables documented in .env.example: each `VAR=` or `# VAR=` line that has a comment
/// (a line of prose) above it in its block.
fn documented_variables(text: &str) -> BTreeMap<String, bool> {
    let mut documented = BTreeMap::new();
    let mut explained = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            explained = false;
            continue;
        }
        let body = line.trim_start_matches('#').trim_start();
        let variable = body.split_once('=').map(|(name, _)| name).filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        match variable {
            Some(name) => {
                documented.insert(name.to_owned(), explained);
            }
            None if line.starts_with('#') => explained = true,
            None => {}
        }
    }
    documented
}

#[test]
fn the_env_example_reader_wants_a_comment_above_each_variable() {
    let documented = documented_variables(
        "# Where the API listens.\n# API_ADDR=127.0.0.1:8080\nAPI_TIMEOUT=10\n\n# BARE=1\n\nNAKED=\n# Forms: smtp://host?tls=required\n",
    );
    assert_eq!(documented.get("API_ADDR"), Some(&true));
    assert_eq!(documented.get("API_TIMEOUT"), Some(&true));
    assert_eq!(documented.get("BARE"), Some(&false));
    assert_eq!(documented.get("NAKED"), Some(&false));
    assert_eq!(
        documented.len(),
        4,
        "prose with `=` is no variable: {documented:?}"
    );
}

/// Variables compose.yaml interpolates: `${VAR}`, `${VAR:-default}`, `$VAR` (not `$$`).
fn interpolated_variables(raw: &str) -> BTreeSet<String> {
    let chars: Vec<char> = raw.chars().collect();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'$') {
            i += 2;
            continue;
        }
        let start = if chars.get(i + 1) == Some(&'{') {
            i + 2
        } else {
            i + 1
        };
        let mut end = start;
        while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_') {
            end += 1;
        }
        if end > start {
            found.insert(chars[start..end].iter().collect());
        }
        i = end.max(i + 1);
    }
    found
}

#[test]
fn every_variable_compose_sets_for_idp_or_interpolates_is_documented_in_env_example() {
    let compose = Compose::load();
    let documented = documented_variables(&read(&repo_root().join(".env.example")));
    let mut wanted: BTreeMap<String, String> = BTreeMap::new(); // variable -> where
    for (name, service) in compose.services() {
        // Only the images built here read idp's variables; the others' are their images' own.
        if service.get("build").is_none() {
            continue;
        }
        for variable in environment(service).into_keys() {
            wanted
                .entry(variable)
                .or_insert(format!("set for service `{name}`"));
        }
    }
    for variable in interpolated_variables(&compose.raw) {
        wanted.entry(variable).or_insert("interpolated".to_owned());
    }
    let mut problems = Vec::new();
    if wanted.is_empty() {
        problems.push("compose/compose.yaml sets and interpolates no variable".to_owned());
    }
    for (variable, why) in &wanted {
        match documented.get(variable) {
            None => problems.push(format!(
                "`{variable}` ({why} in compose/compose.yaml) has no `{variable}=` or `# {variable}=` line in .env.example"
            )),
            Some(false) => problems.push(format!(
                "`{variable}` ({why} in compose/compose.yaml) is in .env.example without a comment explaining it"
            )),
            Some(true) => {}
        }
    }
    assert_no_problems(".env.example against compose/compose.yaml", &problems);
}
