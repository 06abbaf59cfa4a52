"""otalign.ot"""
