"""saekit.harness"""
