"""The `clean:` section of a recipe: which steps `llmtune clean` runs and their settings.

A setting left at null takes the default of the row kind (see KIND_DEFAULTS in llmtune.data.clean.rules): web
rules such as Gopher's 50-word minimum suit pretraining documents, not a chat turn or an instruction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.schema import Strict


class LangSpec(Strict):
    """Language identification with py3langid (its model ships inside the package, so it works offline)."""

    languages: list[str] = []
    """ISO 639-1 codes to keep (`[en, zh]`); empty: no language step."""
    min_confidence: float = Field(0.5, ge=0, le=1)
    """Keep a row only when its language is listed with at least this probability."""


class RulesSpec(Strict):
    """Rule filters; null takes the row kind's default (text: web-document rules; chat, preference, prompt: lenient)."""

    enabled: bool = True
    """Run the rule step at all."""
    min_words: int | None = Field(None, ge=0)
    """Fewest words a row may have."""
    max_words: int | None = Field(None, gt=0)
    """Most words a row may have."""
    max_symbol_ratio: float | None = Field(None, ge=0, le=1)
    """Most characters that are neither letters, digits nor spaces, as a fraction of all characters."""
    max_digit_ratio: float | None = Field(None, ge=0, le=1)
    """Most digits, as a fraction of all characters."""
    max_top_word_ratio: float | None = Field(None, gt=0, le=1)
    """Most that one word may make up of a row of 10 words or more (word repetition: "buy buy buy...")."""
    min_stop_words: int | None = Field(None, ge=0)
    """Fewest English stop words (the, and, of...) for an English row (Gopher: 2)."""
    gopher_quality: bool | None = None
    """datatrove's GopherQualityFilter (word count, mean word length, symbol, bullet and ellipsis lines)."""
    gopher_repetition: bool | None = None
    """datatrove's GopherRepetitionFilter (duplicated lines, paragraphs and n-grams; top n-gram share)."""
    c4: bool | None = None
    """datatrove's C4QualityFilter, document-level outcomes (lorem ipsum, curly brackets, too few sentences)."""
    drop_patterns: list[str] = []
    """Regular expressions (Python syntax); a row matching any one is dropped."""
    drop_words: list[str] = []
    """Words (case-insensitive, whole words); a row containing any one is dropped."""


class ExactSpec(Strict):
    """Exact deduplication on a normalised hash (NFKC, lower case, whitespace collapsed); the first row is kept."""

    enabled: bool = True
    """Run the step."""


class NearSpec(Strict):
    """Near-duplicate deduplication with MinHash and LSH; null takes the row kind's default (text: 5-word shingles,
    128 permutations; chat, preference, prompt: 2-word shingles, 256 permutations; threshold 0.7 for all). The
    first row of a cluster is kept."""

    enabled: bool = True
    """Run the step."""
    threshold: float | None = Field(None, gt=0, lt=1)
    """Estimated Jaccard similarity of word n-gram sets at or above which a row is a duplicate of an earlier one."""
    ngram: int | None = Field(None, gt=0)
    """Words per shingle (rows shorter than this are one shingle)."""
    permutations: int | None = Field(None, ge=16, le=1024)
    """MinHash permutations: more estimate similarity more exactly and take longer."""
    seed: int = 1
    """Seed of the hash permutations (the same seed gives the same result)."""


class ModelFilterSpec(Strict):
    """Perplexity under a small causal LM (llmtune's eval code); off unless a model is given."""

    model: str | None = None
    """A model directory (or Hub id) to score rows with; null: no model step."""
    max_perplexity: float | None = Field(None, gt=0)
    """Keep rows whose perplexity is at most this."""
    keep_fraction: float | None = Field(None, gt=0, le=1)
    """Keep this fraction of rows, those with the lowest perplexity."""
    context: int = Field(512, gt=1)
    """Tokens per scoring window (longer rows are scored in windows)."""
    batch_size: int = Field(8, gt=0)
    """Windows per forward pass."""

    @model_validator(mode="after")
    def _one_rule(self) -> ModelFilterSpec:
        if self.model and (self.max_perplexity is None) == (self.keep_fraction is None):
            raise ValueError("set exactly one of max_perplexity and keep_fraction for the model filter")
        return self


class ExecutorSpec(Strict):
    """Run the cleaning as a datatrove pipeline under one of its executors instead of in this process; for data
    beyond one machine (see docs/data.md: the same steps, stage by stage, through files in `work_dir`)."""

    kind: Literal["local", "slurm", "ray"] | None = None
    """null: one streaming process (the default); local: datatrove's LocalPipelineExecutor (several processes);
    slurm: SlurmPipelineExecutor (sbatch job arrays; needs `sbatch`); ray: RayPipelineExecutor (needs
    `pip install 'llmtune[ray]'`)."""
    tasks: int = Field(1, gt=0)
    """Tasks of each data stage; the input files are split between them in order (a file is never split)."""
    workers: int = Field(-1, ge=-1)
    """Tasks run at the same time (-1: all)."""
    work_dir: str | None = None
    """Folder for the stages' intermediate files, on a filesystem every task can read (null: OUT.datatrove beside
    --out); emptied on success except its `logs`."""
    logging_dir: str | None = None
    """datatrove's logs, stats and completion marks (null: WORK_DIR/logs)."""
    partition: str | None = None
    """Slurm partition to submit to (slurm: required)."""
    time: str | None = Field(None, pattern=r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
    """Time limit of each job, [D-]HH:MM:SS (slurm: required; ray: a task's timeout)."""
    cpus_per_task: int = Field(1, gt=0)
    """CPUs of each task (slurm, ray)."""
    mem_per_cpu_gb: float = Field(2, gt=0)
    """Memory per CPU in GB (slurm, ray)."""
    qos: str = "normal"
    """Slurm quality of service."""
    job_name: str = "llmtune-clean"
    """Slurm job name (each stage adds its own suffix)."""
    env_command: str | None = None
    """Shell command each Slurm job runs first to set up Python (null: activate the virtual environment running
    llmtune, when there is one)."""
    sbatch_args: dict[str, str] = {}
    """More `#SBATCH --key=value` lines (account, constraint, ...)."""


class CleanSpec(Strict):
    """What `llmtune clean` does; flags on the command line override these."""

    lang: LangSpec = LangSpec()
    """Language identification."""
    rules: RulesSpec = RulesSpec()
    """Rule filters (length, symbols, digits, repetition, stop words, patterns and words)."""
    exact: ExactSpec = ExactSpec()
    """Exact deduplication."""
    near: NearSpec = NearSpec()
    """Near-duplicate deduplication."""
    perplexity: ModelFilterSpec = ModelFilterSpec()
    """The model filter."""
    executor: ExecutorSpec = ExecutorSpec()
    """Where the steps run: this process (the default) or a datatrove executor (local, Slurm, Ray)."""
    warn_drop_fraction: float = Field(0.5, gt=0, le=1)
    """A step dropping more than this fraction of a file's rows is reported as a warning."""
    examples: int = Field(3, ge=0)
    """Dropped rows shown per step and reason in the report."""


class CleanRecipe(Strict):
    """A recipe file for `llmtune clean --recipe`: a `clean:` section (and an optional description)."""

    description: str = ""
    """One line about what this cleaning is for."""
    clean: CleanSpec = CleanSpec()
    """The cleaning steps and their settings."""
