"""saekit.releases"""
