"""otalign.train"""
