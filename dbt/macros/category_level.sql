{#- The n-th level (1-based) of a '/'-separated category path; both warehouses have split_part. -#}
{% macro category_level(column, level) -%}
    nullif(split_part({{ column }}, '/', {{ level }}), '')
{%- endmacro %}
