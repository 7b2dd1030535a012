"""saekit.releases: manifests -> bundles (Hub layout, model card, plots, feature browser,
SHA256SUMS) -> Hub publish, and ``hf://`` loading.

    bundle.build(manifest_path, out_dir) -> Path          bundle.verify(bundle_dir) -> release.json
    publish.publish(bundle_dir, repo_id, *, dry_run=False) -> PublishResult
    hub.load_hf(ref) -> SAE

(The loopback Hub the tests publish to is a test double: saekit.testing.loopback_hub.)

Imports nothing heavy at package import.
"""
