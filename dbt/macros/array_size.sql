{#- Number of elements of an array column. -#}
{% macro array_size(column) -%}
    {{ return(adapter.dispatch('array_size', 'postmodern')(column)) }}
{%- endmacro %}

{% macro default__array_size(column) -%}
    len({{ column }})
{%- endmacro %}

{% macro snowflake__array_size(column) -%}
    array_size({{ column }})
{%- endmacro %}
