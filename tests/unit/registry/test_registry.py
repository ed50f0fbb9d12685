import sys

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from slmflow.config import Gates, RegistryConfig
from slmflow.errors import GateFailedError, RegistryError, RollbackError
from slmflow.registry.aliases import aliased_version, rollback
from slmflow.registry.registrar import Evaluation, Registrar, candidates_from_evaluation
from slmflow.registry.rules import Candidate
from testkit.processes import PROJECT_DIR, run_command

GOOD = {"accuracy": 0.95, "tokens_per_second": 300.0, "latency_p50_s": 0.05}


def candidates(onnx_accuracy=0.9, transformers_accuracy=0.95):
    return {
        "onnx-chat": Candidate("onnx-chat", "models:/m-onnx", {**GOOD, "accuracy": onnx_accuracy}),
        "transformers-chat": Candidate(
            "transformers-chat", "models:/m-tf", {**GOOD, "accuracy": transformers_accuracy, "tokens_per_second": 50.0}
        ),
    }


def log_echo() -> str:
    from slmflow.flavors.common import CHAT_EXAMPLE

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    with mlflow.start_run():
        # Declared requirements: inferring them imports the model in a new Python process, seconds per test.
        info = mlflow.pyfunc.log_model(
            name="echo", python_model=Echo(), input_example=CHAT_EXAMPLE, pip_requirements=["mlflow"]
        )
        return f"models:/{info.model_id}"


@pytest.fixture
def logged_uri(tracking_store):
    return log_echo()


def identity(revision="r1", config="c1", code="k1"):
    return {"source_revision": revision, "config_hash": config, "code_hash": code}


def registrar(**gates) -> Registrar:
    return Registrar(RegistryConfig(model_name="reg-test", gates=Gates(**gates)))


def test_register_tags_describes_and_promotes(logged_uri):
    result = registrar(min_accuracy=0.8).register(
        Candidate("onnx-chat", logged_uri, GOOD), identity(), {"source": "builtin:tiny-phi3"}, "why"
    )
    assert result.created and result.promoted
    client = MlflowClient()
    version = client.get_model_version("reg-test", result.version.version)
    assert version.description.startswith("why\n\nGates passed (min_accuracy 0.80, ")
    assert "- passed: accuracy 0.950 >= min_accuracy 0.800" in version.description
    assert version.tags["gate.min_accuracy"] == "passed: accuracy 0.950 >= min_accuracy 0.800"
    assert version.description.endswith("Promoted to `champion`.")
    assert version.tags["flavor"] == "onnx-chat" and version.tags["decision"] == "promoted to champion"
    assert version.tags["source_revision"] == "r1" and version.tags["gates"] == "passed"
    assert float(version.tags["metric.accuracy"]) == GOOD["accuracy"]
    assert client.get_model_version_by_alias("reg-test", "champion").version == result.version.version
    assert aliased_version(client, "reg-test", "challenger") is None  # the latest candidate is the champion
    model = client.get_registered_model("reg-test")
    assert "`previous-champion`" in model.description and "rollback reg-test" in model.description
    assert model.tags["task"] == "llm/v1/chat" and model.tags["selection_rule"] == "best_accuracy"


def test_same_identity_registers_nothing_new(logged_uri):
    first = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    again = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    assert not again.created and again.version.version == first.version.version
    changed = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(config="c2"), {}, "d")
    assert changed.created and changed.version.version != first.version.version


def test_a_version_left_without_aliases_by_a_killed_job_is_promoted_by_the_next_run(logged_uri, monkeypatch):
    """The job died between creating the version and moving the aliases: the next run finishes the promotion."""
    original = Registrar._settle
    monkeypatch.setattr(Registrar, "_settle", lambda *args, **kwargs: None)  # the job dies before the aliases
    registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    client = MlflowClient()
    [left] = client.search_model_versions("name = 'reg-test'")
    assert aliases(client) == {} and "aliases_set" not in left.tags
    monkeypatch.setattr(Registrar, "_settle", original)
    again = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    assert not again.created and again.promoted and again.version.version == left.version
    assert aliases(client) == {"champion": str(left.version)}
    assert client.get_model_version("reg-test", left.version).tags["aliases_set"] == "true"
    assert len(client.search_model_versions("name = 'reg-test'")) == 1


def test_failed_gate_registers_nothing_and_keeps_the_champion(logged_uri):
    first = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    worse = {**GOOD, "accuracy": 0.2}
    with pytest.raises(
        GateFailedError, match=r"accuracy 0.200 < min_accuracy 0.800.*nothing registered; champion stays"
    ):
        registrar(min_accuracy=0.8).register(Candidate("onnx-chat", logged_uri, worse), identity("r2"), {}, "d")
    client = MlflowClient()
    assert len(client.search_model_versions("name = 'reg-test'")) == 1
    assert client.get_model_version_by_alias("reg-test", "champion").version == first.version.version


def test_a_regression_measured_against_the_champion_is_refused_with_its_interval(logged_uri):
    registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    other = Candidate("onnx-chat", log_echo(), GOOD)
    measured = Evaluation(
        "run-1",
        {"onnx-chat": other},
        {
            "onnx-chat_vs_champion/accuracy": -0.1,
            "onnx-chat_vs_champion/accuracy_ci_low": -0.2,
            "onnx-chat_vs_champion/accuracy_ci_high": -0.02,
            "onnx-chat_vs_champion/latency_ratio": 1.0,
            "onnx-chat_vs_champion/latency_ratio_ci_low": 0.9,
            "onnx-chat_vs_champion/latency_ratio_ci_high": 1.1,
        },
        measured_champion="models:/reg-test/1",
        champion_error=None,
        confidence=0.95,
    )
    with pytest.raises(GateFailedError) as refused:
        registrar(max_accuracy_regression=0.05).register(other, identity("r2"), {}, "d", measured)
    assert (
        "accuracy - champion -0.100 [-0.200, -0.020] (95%), lower bound not above -0.050, against champion "
        "version 1 (measured in this run on the same items)" in str(refused.value)
    )
    # The same candidate without the paired measurement: the recorded metrics, and the decision says so.
    result = registrar(max_accuracy_regression=0.05).register(other, identity("r3"), {}, "d")
    gate = MlflowClient().get_model_version("reg-test", result.version.version).tags["gate.max_accuracy_regression"]
    assert gate.startswith("passed: accuracy 0.950 - champion's recorded 0.950 = +0.000")
    assert "not measured in this run (no paired evaluation); compared with its recorded metrics" in gate


def test_register_on_gate_failure_parks_the_version_without_promotion(logged_uri):
    config = RegistryConfig(model_name="reg-test", gates=Gates(min_accuracy=0.99), register_on_gate_failure=True)
    with pytest.raises(GateFailedError, match="registered as version 1 without promotion; there is no champion"):
        Registrar(config).register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    client = MlflowClient()
    [version] = client.search_model_versions("name = 'reg-test'")
    assert version.tags["gates"].startswith("failed: accuracy 0.950 < min_accuracy 0.990")
    assert version.tags["decision"] == "parked as challenger"
    assert "Parked as `challenger`; `champion` did not move." in version.description
    assert Registrar(config).champion() is None
    assert client.get_model_version_by_alias("reg-test", "challenger").version == version.version


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(number) for alias, number in client.get_registered_model("reg-test").aliases.items()}


def test_aliases_follow_the_documented_rule(logged_uri):
    """champion: latest passing; challenger: latest candidate when not champion; previous-champion: the one before."""
    client = MlflowClient()
    parking = Registrar(
        RegistryConfig(model_name="reg-test", gates=Gates(min_accuracy=0.9), register_on_gate_failure=True)
    )
    parking.register(Candidate("onnx-chat", logged_uri, GOOD), identity("r1"), {}, "d")
    assert aliases(client) == {"champion": "1"}
    parking.register(Candidate("onnx-chat", logged_uri, GOOD), identity("r2"), {}, "d")
    assert aliases(client) == {"champion": "2", "previous-champion": "1"}
    with pytest.raises(GateFailedError):
        parking.register(Candidate("onnx-chat", logged_uri, {**GOOD, "accuracy": 0.5}), identity("r3"), {}, "d")
    assert aliases(client) == {"champion": "2", "previous-champion": "1", "challenger": "3"}
    parking.register(Candidate("onnx-chat", logged_uri, GOOD), identity("r4"), {}, "d")
    assert aliases(client) == {"champion": "4", "previous-champion": "2"}


def test_rollback_swaps_champion_and_previous_champion(logged_uri):
    client = MlflowClient()
    registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity("r1"), {}, "d")
    with pytest.raises(RollbackError, match="has no previous-champion: version 1 was the first champion"):
        rollback("reg-test")
    registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity("r2"), {}, "d")
    done = rollback("reg-test")
    assert (done.from_version, done.to_version) == ("2", "1")
    assert aliases(client) == {"champion": "1", "previous-champion": "2"}
    assert client.get_model_version("reg-test", "2").tags["decision"] == "rolled back to version 1"
    rollback("reg-test")  # a second rollback undoes the first
    assert aliases(client) == {"champion": "2", "previous-champion": "1"}


def test_rollback_is_one_command(logged_uri, tracking_store):
    registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity("r1"), {}, "d")
    registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity("r2"), {}, "d")
    command = [sys.executable, "-m", "slmflow.registry", "rollback"]
    done = run_command([*command, "reg-test"], cwd=PROJECT_DIR, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "reg-test: champion moved back from version 2 to version 1" in done.stdout
    assert aliases(MlflowClient()) == {"champion": "1", "previous-champion": "2"}
    missing = run_command([*command, "no-such-model"], cwd=PROJECT_DIR, timeout=120)
    assert missing.returncode == 1
    assert "error: no registered model named 'no-such-model'" in missing.stderr


def test_candidates_are_read_from_the_evaluate_run(tracking_store):
    with mlflow.start_run() as run:
        mlflow.set_tag("slmflow.candidate.onnx-chat", "models:/m-1")
        mlflow.log_metrics({"onnx-chat/accuracy": 1.0, "onnx-chat/tokens_per_second": 9.0, "agreement_rate": 1.0})
    found = candidates_from_evaluation(MlflowClient().get_run(run.info.run_id))
    assert found == {"onnx-chat": Candidate("onnx-chat", "models:/m-1", {"accuracy": 1.0, "tokens_per_second": 9.0})}


def test_a_concurrent_registration_of_the_same_identity_keeps_the_first_version(logged_uri, monkeypatch):
    """Two runs that both found nothing registered: the later version is withdrawn, the first one stays."""
    first = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    late = registrar()
    monkeypatch.setattr(late, "find_registered", lambda identity: None)  # it looked before the first one existed
    result = late.register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d")
    assert not result.created and result.version.version == first.version.version
    client = MlflowClient()
    assert [v.version for v in client.search_model_versions("name = 'reg-test'")] == [first.version.version]
    assert client.get_model_version_by_alias("reg-test", "champion").version == first.version.version


def _register_at_the_barrier(tracking_uri: str, model_uri: str, barriers, results) -> None:
    """A registering process (as a `register` step is) whose version write waits for the other process's."""
    mlflow.set_tracking_uri(tracking_uri)
    before_write, after_write = barriers
    real = mlflow.register_model

    def register_together(*args, **kwargs):
        before_write.wait()  # both have looked for the identity and found nothing: no version of it exists yet
        version = real(*args, **kwargs)
        after_write.wait()  # both versions exist before either checks which one came first
        return version

    mlflow.register_model = register_together
    try:
        result = registrar().register(Candidate("onnx-chat", model_uri, GOOD), identity("r2"), {}, "d")
        results.put((str(result.version.version), result.created, result.promoted))
    except Exception as error:  # reported to the test, which fails on it
        results.put(repr(error))


def test_two_processes_registering_the_same_identity_at_the_same_moment_keep_one_version(logged_uri, tracking_store):
    """Two runs of one identity, both past the look-up, write their versions together: one version stays,
    it is the champion, the champion before it is previous-champion, and both runs name that version."""
    import multiprocessing

    first = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity("r1"), {}, "d")
    spawn = multiprocessing.get_context("spawn")
    barriers = (spawn.Barrier(2, timeout=120), spawn.Barrier(2, timeout=120))
    results = spawn.Queue()
    processes = [
        spawn.Process(target=_register_at_the_barrier, args=(tracking_store, logged_uri, barriers, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert all(isinstance(outcome, tuple) for outcome in outcomes), outcomes
    outcomes.sort()
    client = MlflowClient()
    [kept] = [v for v in client.search_model_versions("name = 'reg-test'") if v.tags["source_revision"] == "r2"]
    # The earlier version stays and is promoted; the later run withdraws its own and names the kept one.
    assert outcomes == [(str(kept.version), False, False), (str(kept.version), True, True)], outcomes
    assert int(kept.version) == int(first.version.version) + 1
    assert len(client.search_model_versions("name = 'reg-test'")) == 2
    assert aliases(client) == {"champion": str(kept.version), "previous-champion": str(first.version.version)}
    assert kept.tags["decision"] == "promoted to champion" and kept.tags["aliases_set"] == "true"


class FailingRegistry(MlflowClient):
    """A registry that answers with a server error, as a tracking server under trouble does."""

    def __init__(self, error_code: int) -> None:
        super().__init__()
        self.error_code = error_code

    def _fail(self, *args, **kwargs):
        raise MlflowException("the database is unavailable", error_code=self.error_code)

    get_registered_model = search_model_versions = _fail


@pytest.mark.parametrize("code", [INTERNAL_ERROR, PERMISSION_DENIED])
def test_registry_errors_are_not_read_as_nothing_registered(tracking_store, code):
    registrar = Registrar(RegistryConfig(model_name="reg-test"), FailingRegistry(code))
    with pytest.raises(RegistryError, match="cannot read the champion of 'reg-test': .*database is unavailable"):
        registrar.champion()
    with pytest.raises(RegistryError, match="cannot list the versions of 'reg-test'"):
        registrar.find_registered(identity())


def test_only_does_not_exist_means_none(tracking_store):
    registrar = Registrar(RegistryConfig(model_name="never-registered"))
    assert registrar.champion() is None
    assert registrar.find_registered(identity()) is None
    assert Registrar(RegistryConfig(model_name="x"), FailingRegistry(RESOURCE_DOES_NOT_EXIST)).champion() is None


def test_rollback_names_a_registry_that_cannot_answer(tracking_store):
    with pytest.raises(RegistryError, match="cannot read 'reg-test': .*database is unavailable"):
        rollback("reg-test", FailingRegistry(INTERNAL_ERROR))
    with pytest.raises(RollbackError, match="no registered model named 'reg-test'"):
        rollback("reg-test")


def test_a_new_training_set_is_a_new_identity(logged_uri):
    """A fine-tuned version's identity holds its training set's digest beside the other three."""
    trained = {**identity(), "dataset_digest": "d1"}
    first = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), trained, {}, "d")
    again = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), dict(trained), {}, "d")
    other = registrar().register(Candidate("onnx-chat", logged_uri, GOOD), {**trained, "dataset_digest": "d2"}, {}, "d")
    assert first.created and not again.created and again.version.version == first.version.version
    assert other.created and other.version.tags["dataset_digest"] == "d2"


def test_ask_prints_the_champions_answer(logged_models):
    """What bin/run-offline ends with: a registered model answering."""
    version = mlflow.register_model(logged_models["onnx-chat"], "ask-test")
    MlflowClient().set_registered_model_alias("ask-test", "champion", version.version)
    question = "What is the capital of Peru?"
    done = run_command([sys.executable, "-m", "slmflow.registry", "ask", "ask-test", question], cwd=PROJECT_DIR)
    assert done.returncode == 0, done.stderr
    assert f"models:/ask-test@champion answers {question!r}: 'The capital of Peru is Lima.'" in done.stdout


def versus_base(low: float) -> Evaluation:
    comparisons = {
        "onnx-chat_vs_base/accuracy": 0.1,
        "onnx-chat_vs_base/accuracy_ci_low": low,
        "onnx-chat_vs_base/accuracy_ci_high": 0.2,
    }
    return Evaluation("run-1", {}, comparisons, None, None, 0.95)


def test_a_fine_tune_not_shown_better_than_its_base_is_refused_with_the_interval(logged_uri):
    strict = Registrar(RegistryConfig(model_name="reg-test"), require_improvement_over_base=True)
    with pytest.raises(GateFailedError) as refused:
        strict.register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d", versus_base(0.0))
    assert "accuracy - base (onnx-chat, not fine-tuned, same items) +0.100 [+0.000, +0.200] (95%), lower bound " in (
        str(refused.value)
    )
    assert "nothing registered; there is no champion" in str(refused.value)
    # Without the setting, the same evaluation passes: the base gate is opt-in.
    assert (
        registrar().register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d", versus_base(0.0)).promoted
    )


def test_a_fine_tune_better_than_its_base_is_promoted_and_the_gate_is_recorded(logged_uri):
    strict = Registrar(RegistryConfig(model_name="reg-test"), require_improvement_over_base=True)
    result = strict.register(Candidate("onnx-chat", logged_uri, GOOD), identity(), {}, "d", versus_base(0.02))
    assert result.promoted
    version = MlflowClient().get_model_version("reg-test", result.version.version)
    assert version.tags["gate.improvement_over_base"] == (
        "passed: accuracy - base (onnx-chat, not fine-tuned, same items) +0.100 [+0.020, +0.200] (95%), "
        "lower bound above 0.000"
    )
    assert "improvement over the base (paired lower bound above 0)" in version.description
    assert "- passed: accuracy - base (onnx-chat" in version.description
