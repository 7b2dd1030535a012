"""saekit.testing: test doubles that ship with the package, so that the tests, the demo and
``saekit release hub`` can use them from an installed saekit.

    loopback_hub.serve(root) -> server (.url)    a loopback Hugging Face Hub (HF_ENDPOINT)

A test double is not part of saekit's pipeline: no layer below the CLI imports this
package, and it imports nothing of saekit (pyproject's import-linter contracts).
"""
