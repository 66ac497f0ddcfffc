# VLM stage: sample tables -> perturbed VLM inputs -> (tiny models trained here, grounding LoRA) ->
# per-sample metric tables paths.vlm_metrics(model, task, dataset, perturbation).
# One evaluation job per (model, task, dataset) loads the model once and writes every condition;
# medfm_robust.vlm.workflow holds the input/params helpers (tested library code).
from medfm_robust.vlm import workflow as vlm_wf

VLM = config["vlm"]


wildcard_constraints:
    vlm_dataset=vlm_wf.alternatives(list(VLM["datasets"])),
    vlm_model=vlm_wf.alternatives(list(VLM["models"])),
    task="vqa|caption|grounding",


rule vlm_samples:
    input:
        lambda wildcards: vlm_wf.sample_inputs(config, wildcards.vlm_dataset),
    output:
        paths.vlm_samples(),
    log:
        "logs/vlm_samples/{vlm_dataset}/{task}.log",
    conda:
        "../envs/vlm.yaml"
    params:
        spec=lambda wildcards: VLM["datasets"][wildcards.vlm_dataset],
        sampling=VLM["sampling"],
        seed=SEED,
        resources_dir=config["resources_dir"],
        sources=lambda wildcards: source_params(vlm_wf.sample_inputs(config, wildcards.vlm_dataset)),
    script:
        "../workflow/scripts/vlm_samples.py"


rule vlm_perturb:
    input:
        unpack(lambda wildcards: vlm_wf.perturb_inputs(config, wildcards.vlm_dataset)),
    output:
        [paths.vlm_perturbed(perturbation=t) for t in vlm_wf.types(config)],
    log:
        "logs/vlm_perturb/{vlm_dataset}.log",
    conda:
        "../envs/vlm.yaml"
    params:
        settings=lambda wildcards: vlm_wf.perturb_params(config, wildcards.vlm_dataset),
    script:
        "../workflow/scripts/vlm_perturb.py"


rule vlm_train_tiny:
    input:
        lambda wildcards: vlm_wf.tables(config, VLM["tiny_training"]["dataset"]),
    output:
        model=directory(paths.vlm_model_dir()),
        info=paths.vlm_model_info(),
    log:
        "logs/vlm_train_tiny/{vlm_model}.log",
    wildcard_constraints:
        vlm_model=vlm_wf.alternatives(vlm_wf.models(config, kinds=("tiny",))),
    conda:
        "../envs/vlm.yaml"
    threads: 1
    params:
        spec=lambda wildcards: VLM["models"][wildcards.vlm_model],
        training=VLM["tiny_training"],
        max_new_tokens=VLM["tasks"]["vqa"]["max_new_tokens"],
        seed=SEED,
    script:
        "../workflow/scripts/vlm_train_tiny.py"


rule vlm_finetune_grounding:
    input:
        model=lambda wildcards: vlm_wf.model_dir(config, wildcards.vlm_model),
        samples=paths.vlm_samples(VLM["grounding_finetune"]["dataset"], "grounding"),
    output:
        adapter=directory(paths.vlm_adapter()),
        info=paths.vlm_adapter(suffix=".json"),
    log:
        "logs/vlm_finetune_grounding/{vlm_model}.log",
    wildcard_constraints:
        vlm_model=vlm_wf.alternatives(vlm_wf.models(config, kinds=("local", "tiny"))),
    conda:
        "../envs/vlm.yaml"
    threads: 1
    resources:
        gpu=lambda wildcards: int(VLM["models"][wildcards.vlm_model]["kind"] == "local"),
    params:
        spec=lambda wildcards: VLM["models"][wildcards.vlm_model],
        settings=VLM["grounding_finetune"],
        state=lambda wildcards: paths.vlm_adapter(wildcards.vlm_model, ".resume.pt"),
        seed=SEED,
        sources=lambda wildcards: source_params(vlm_wf.model_dir(config, wildcards.vlm_model)),
    script:
        "../workflow/scripts/vlm_finetune_grounding.py"


rule vlm_evaluate:
    input:
        unpack(lambda wc: vlm_wf.eval_inputs(config, wc.vlm_model, wc.task, wc.vlm_dataset)),
    output:
        **vlm_wf.metric_outputs(config),
    log:
        "logs/vlm_evaluate/{vlm_model}/{task}/{vlm_dataset}.log",
    wildcard_constraints:
        vlm_model=vlm_wf.alternatives(vlm_wf.models(config, kinds=("local", "tiny"))),
    conda:
        "../envs/vlm.yaml"
    threads: 1
    resources:
        gpu=lambda wildcards: int(VLM["models"][wildcards.vlm_model]["kind"] == "local"),
    params:
        settings=lambda wc: vlm_wf.eval_params(config, wc.vlm_model, wc.task, wc.vlm_dataset),
        sources=lambda wildcards: source_params(vlm_wf.model_dir(config, wildcards.vlm_model)),
    script:
        "../workflow/scripts/vlm_evaluate.py"


rule vlm_evaluate_api:
    input:
        unpack(lambda wc: vlm_wf.eval_inputs(config, wc.vlm_model, wc.task, wc.vlm_dataset)),
    output:
        **vlm_wf.metric_outputs(config),
    log:
        "logs/vlm_evaluate_api/{vlm_model}/{task}/{vlm_dataset}.log",
    wildcard_constraints:
        vlm_model=vlm_wf.alternatives(vlm_wf.models(config, kinds=("api",))),
    conda:
        "../envs/vlm.yaml"
    resources:
        api_calls=1,
    params:
        settings=lambda wc: vlm_wf.eval_params(config, wc.vlm_model, wc.task, wc.vlm_dataset),
        api=lambda wildcards: vlm_wf.api_params(config, wildcards.vlm_model),
    script:
        "../workflow/scripts/vlm_evaluate.py"


STAGE_TARGETS.append(lambda: vlm_wf.final_targets(config))
